/* SPDX-License-Identifier: MIT */
/* Control socket server (wire format in control_proto.h). A line over
 * CONTROL_MAX_LINE or that is not a JSON object gets an error and the
 * connection closes. Mutating commands need the peer to be root or the daemon's
 * own user (SO_PEERCRED), or its group with control.mutating: group. */
#include "control.h"

#include <errno.h>
#include <grp.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

#define CONTROL_IDLE_SECONDS 60
/* Answers queued for a client that does not read them: past this, its
 * requests are not read any more until it has read half of them. */
#define CONTROL_MAX_QUEUED (256 * 1024)
/* Connections at once; more wait in the listen backlog. */
#define CONTROL_MAX_CONNS 64

struct conn;

struct control {
	struct event_base *base;
	struct evconnlistener *listener;
	char *path;
	struct conn *conns; /* open connections, closed with the control */
	int n_conns;
	bool is_full;        /* not accepting: CONTROL_MAX_CONNS open */
	struct event *resume; /* accepting again after running out of descriptors */
	gid_t gid;          /* the socket's group */
	enum mutating_policy mutating;
	const struct control_command *table;
	void *arg;
};

struct conn {
	struct control *c;
	struct conn *prev, *next;
	struct bufferevent *bev;
	struct ucred peer;
	bool is_closing;
	bool is_backed_up;   /* its answers pile up: reading paused */
};

static json_t *error_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *error_reply(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:i, s:b, s:s}", "v", CONTROL_PROTOCOL_VERSION, "ok", 0, "error", msg);
}

static json_t *ok_reply(json_t *result)
{
	return json_pack("{s:i, s:b, s:o}", "v", CONTROL_PROTOCOL_VERSION, "ok", 1, "result",
			 result ? result : json_object());
}

static json_t *dispatch(struct conn *cn, json_t *req)
{
	struct control *c = cn->c;
	const char *cmd;
	json_t *args;
	char why[512];
	if (control_check_request(req, &cmd, &args, why, sizeof(why)) < 0)
		return error_reply("%s", why);
	const struct control_command *k = c->table;
	while (k->name && strcmp(k->name, cmd) != 0)
		k++;
	if (!k->name)
		return error_reply("unknown command \"%s\"", cmd);
	bool may_mutate = cn->peer.uid == 0 || cn->peer.uid == geteuid() ||
			  (c->mutating == MUTATING_GROUP && cn->peer.gid == c->gid);
	if (k->is_mutating && !may_mutate) {
		log_warn("msg=\"control command refused\" cmd=%s peer_uid=%u", cmd, (unsigned)cn->peer.uid);
		return error_reply("permission denied: \"%s\" needs root or the daemon's user%s", cmd,
				   c->mutating == MUTATING_GROUP ? " or group" : "");
	}
	json_t *empty = NULL;
	if (!args)
		args = empty = json_object();
	why[0] = '\0';
	json_t *result = args ? k->run(c->arg, args, why, sizeof(why)) : NULL;
	json_decref(empty);
	if (!result)
		return error_reply("%s", why[0] ? why : "out of memory");
	return ok_reply(result);
}

static void conn_free(struct conn *cn)
{
	struct control *c = cn->c;
	c->n_conns--;
	if (c->is_full && c->n_conns < CONTROL_MAX_CONNS) {
		c->is_full = false;
		if (evconnlistener_enable(c->listener) < 0)
			log_err("msg=\"cannot accept control connections again\"");
	}
	if (cn->prev)
		cn->prev->next = cn->next;
	else if (cn->c->conns == cn)
		cn->c->conns = cn->next;
	if (cn->next)
		cn->next->prev = cn->prev;
	if (cn->bev)
		bufferevent_free(cn->bev);
	free(cn);
}

static void start_closing(struct conn *cn);

static void send_reply(struct conn *cn, json_t *reply)
{
	char *text = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
	json_decref(reply);
	if (!text) {
		text = strdup("{\"v\":1,\"ok\":false,\"error\":\"out of memory\"}");
		if (!text) {
			start_closing(cn);
			return;
		}
	}
	struct evbuffer *out = bufferevent_get_output(cn->bev);
	if (evbuffer_add(out, text, strlen(text)) < 0 || evbuffer_add(out, "\n", 1) < 0)
		start_closing(cn);
	free(text);
}

/* Closing a connection: the error answer is flushed, the write side shut, and
 * whatever the client still sends is discarded until it hangs up (closing with
 * unread input would reset the connection and lose the answer). */
static void start_closing(struct conn *cn)
{
	cn->is_closing = true;
	struct timeval linger = { 5, 0 };
	bufferevent_set_timeouts(cn->bev, &linger, &linger);
	if (evbuffer_get_length(bufferevent_get_output(cn->bev)) == 0)
		shutdown(bufferevent_getfd(cn->bev), SHUT_WR);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct conn *cn = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;
	if (cn->is_closing) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	struct evbuffer *out = bufferevent_get_output(bev);
	while (!cn->is_backed_up && (line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF))) {
		json_error_t err;
		json_t *req = len > CONTROL_MAX_LINE ? NULL : json_loadb(line, len, 0, &err);
		free(line);
		if (!req || !json_is_object(req)) {
			send_reply(cn, error_reply(len > CONTROL_MAX_LINE ? "request too long" : "malformed request: not a JSON object"));
			json_decref(req);
			start_closing(cn);
			break;
		}
		send_reply(cn, dispatch(cn, req));
		json_decref(req);
		if (evbuffer_get_length(out) > CONTROL_MAX_QUEUED) {
			/* A client that sends without reading: its memory here stays
			 * bounded; it is read again once it has read half its answers. */
			cn->is_backed_up = true;
			bufferevent_disable(bev, EV_READ);
			bufferevent_setwatermark(bev, EV_WRITE, CONTROL_MAX_QUEUED / 2, 0);
		}
	}
	if (!cn->is_closing && !cn->is_backed_up && evbuffer_get_length(in) > CONTROL_MAX_LINE) {
		send_reply(cn, error_reply("request too long"));
		start_closing(cn);
	}
	if (cn->is_closing)
		evbuffer_drain(in, evbuffer_get_length(in));
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct conn *cn = arg;
	if (cn->is_closing) {
		shutdown(bufferevent_getfd(bev), SHUT_WR);
	} else if (cn->is_backed_up) {
		cn->is_backed_up = false;
		bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
		if (bufferevent_enable(bev, EV_READ) < 0) {
			conn_free(cn);
			return;
		}
		on_read(bev, cn); /* the requests already in */
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
		conn_free(arg);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
	struct control *c = arg;
	struct conn *cn = calloc(1, sizeof(*cn));
	if (!cn) {
		close(fd);
		return;
	}
	socklen_t sl = sizeof(cn->peer);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cn->peer, &sl) < 0) {
		log_warn("msg=\"cannot read control peer credentials\" error=\"%s\"", strerror(errno));
		free(cn);
		close(fd);
		return;
	}
	cn->c = c;
	cn->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!cn->bev) {
		free(cn);
		close(fd);
		return;
	}
	/* Slow or idle clients cannot hold a connection forever. */
	struct timeval idle = { CONTROL_IDLE_SECONDS, 0 };
	bufferevent_set_timeouts(cn->bev, &idle, &idle);
	bufferevent_setwatermark(cn->bev, EV_READ, 0, CONTROL_MAX_LINE + 2);
	bufferevent_setcb(cn->bev, on_read, on_write, on_event, cn);
	cn->next = c->conns;
	if (c->conns)
		c->conns->prev = cn;
	c->conns = cn;
	if (++c->n_conns >= CONTROL_MAX_CONNS) {
		c->is_full = true;
		evconnlistener_disable(c->listener);
		log_warn("msg=\"control connections at their limit; new ones wait\" limit=%d", CONTROL_MAX_CONNS);
	}
	if (bufferevent_enable(cn->bev, EV_READ | EV_WRITE) < 0)
		conn_free(cn);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
	struct control *c = arg;
	if (!c->is_full && evconnlistener_enable(c->listener) < 0)
		log_err("msg=\"cannot accept control connections again\"");
}

/* accept failed: out of descriptors (EMFILE, ENFILE) or memory. Accepting
 * again at once would spin; the listener rests for a second instead. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
	struct control *c = arg;
	int e = EVUTIL_SOCKET_ERROR();
	log_warn("msg=\"cannot accept a control connection; pausing for 1 s\" error=\"%s\"", strerror(e));
	evconnlistener_disable(l);
	struct timeval second = { 1, 0 };
	if (evtimer_add(c->resume, &second) < 0)
		log_err("msg=\"cannot arm control timer\"");
}

struct control *control_create(struct event_base *base, const char *path, const char *group,
			       enum mutating_policy mutating, const struct control_command *table, void *arg)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sun.sun_path)) {
		log_err("msg=\"control socket path too long\" path=\"%s\"", path);
		return NULL;
	}
	strcpy(sun.sun_path, path);
	struct control *c = calloc(1, sizeof(*c));
	if (!c || !(c->path = strdup(path))) {
		free(c);
		return NULL;
	}
	c->base = base;
	c->mutating = mutating;
	c->table = table;
	c->arg = arg;
	struct stat sb;
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			log_err("msg=\"control socket path exists and is not a socket\" path=\"%s\"", path);
			goto fail;
		}
		unlink(path); /* stale socket of an earlier run */
	}
	mode_t old = umask(0117); /* socket file 0660 */
	c->listener = evconnlistener_new_bind(base, on_accept, c, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
					      (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (!c->listener) {
		log_err("msg=\"cannot bind control socket\" path=\"%s\" error=\"%s\"", path, strerror(errno));
		goto fail;
	}
	evconnlistener_set_error_cb(c->listener, on_accept_error);
	c->resume = evtimer_new(base, on_resume, c);
	if (!c->resume) {
		log_err("msg=\"cannot set up the control socket\" error=\"out of memory\"");
		goto fail;
	}
	c->gid = getegid();
	if (group) {
		struct group *gr = getgrnam(group);
		if (!gr) {
			log_err("msg=\"control.group does not exist\" group=\"%s\"", group);
			goto fail;
		}
		if (chown(path, (uid_t)-1, gr->gr_gid) < 0) {
			log_err("msg=\"cannot give the control socket to its group\" group=\"%s\" error=\"%s\"", group,
				strerror(errno));
			goto fail;
		}
		c->gid = gr->gr_gid;
	}
	if (chmod(path, 0660) < 0) {
		log_err("msg=\"cannot set control socket mode\" error=\"%s\"", strerror(errno));
		goto fail;
	}
	return c;
fail:
	if (c->resume)
		event_free(c->resume);
	if (c->listener) {
		evconnlistener_free(c->listener);
		unlink(path);
	}
	free(c->path);
	free(c);
	return NULL;
}

void control_set_policy(struct control *c, enum mutating_policy mutating)
{
	c->mutating = mutating;
}

void control_destroy(struct control *c)
{
	if (!c)
		return;
	while (c->conns)
		conn_free(c->conns);
	if (c->resume)
		event_free(c->resume);
	if (c->listener) {
		evconnlistener_free(c->listener);
		unlink(c->path);
	}
	free(c->path);
	free(c);
}
