/* SPDX-License-Identifier: MIT */
/* Control socket server. Requests: {"v":1,"cmd":"status","args":{...}}; answers:
 * {"v":1,"ok":true,"result":{...}} or {"v":1,"ok":false,"error":"..."}. A line
 * over CONTROL_MAX_LINE or that is not a JSON object gets an error and the
 * connection closes. Mutating commands need the peer to be root or the daemon's
 * own user (SO_PEERCRED). */
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

#include "ingest.h"
#include "log.h"
#include "sender.h"
#include "source.h"
#include "stage.h"

#define CONTROL_IDLE_SECONDS 60

struct conn;

struct control {
	struct daemon *d;
	struct evconnlistener *listener;
	char *path;
	struct conn *conns; /* open connections, closed with the control */
	gid_t gid;          /* the socket's group */
};

struct conn {
	struct control *c;
	struct conn *prev, *next;
	struct bufferevent *bev;
	struct ucred peer;
	bool is_closing;
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

static json_t *source_json(struct source *s)
{
	struct source_stats *st = &s->stats;
	json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "name", s->cfg->name, "type",
			      source_type_name(s->cfg->type), "path", s->cfg->path ? s->cfg->path : s->cfg->dsn, "files",
			      (json_int_t)st->files, "files_failed", (json_int_t)st->files_failed, "rows_read",
			      (json_int_t)st->rows_read, "rows_staged", (json_int_t)st->rows_staged, "rows_rejected",
			      (json_int_t)st->rows_rejected, "last_file_at", (json_int_t)st->last_file_at);
	if (!o)
		return NULL;
	json_object_set_new(o, "last_file", st->last_file[0] ? json_string(st->last_file) : json_null());
	json_object_set_new(o, "last_error", st->last_error[0] ? json_string(st->last_error) : json_null());
	if (s->cfg->type == SOURCE_SNAPSHOT)
		json_object_set_new(o, "profiles_missing", json_integer(st->profiles_missing));
	if (st->is_busy) {
		int64_t elapsed = now_ms() - st->current_started_at;
		json_object_set_new(o, "ingesting", json_pack("{s:s, s:I, s:I, s:I, s:f}", "file", st->current, "rows",
							      (json_int_t)st->current_rows, "bytes", (json_int_t)st->current_bytes,
							      "size", (json_int_t)st->current_size, "rows_per_second",
							      elapsed > 0 ? (double)st->current_rows * 1000.0 / (double)elapsed : 0.0));
	}
	return o;
}

static json_t *cmd_status(struct control *c)
{
	struct daemon *d = c->d;
	json_t *r = json_object();
	json_object_set_new(r, "version", json_string(TPSYNC_VERSION));
	json_object_set_new(r, "pid", json_integer(getpid()));
	json_object_set_new(r, "uptime_seconds", json_integer((now_ms() - d->started_at) / 1000));
	json_object_set_new(r, "client_code", json_string(d->cfg->target.client_code));
	json_object_set_new(r, "config", json_string(d->cfg->path));
	json_object_set_new(r, "last_error", d->last_error[0] ? json_string(d->last_error) : json_null());
	sender_status(d->sender, r);
	json_t *srcs = json_array();
	for (size_t i = 0; i < d->n_sources; i++)
		json_array_append_new(srcs, source_json(d->sources[i]));
	json_object_set_new(r, "sources", srcs);
	json_object_set_new(r, "ingesting", json_boolean(!ingest_is_idle(d->ingest)));
	return ok_reply(r);
}

static json_t *cmd_sources(struct control *c)
{
	json_t *srcs = json_array();
	for (size_t i = 0; i < c->d->n_sources; i++)
		json_array_append_new(srcs, source_json(c->d->sources[i]));
	return ok_reply(json_pack("{s:o}", "sources", srcs));
}

static int64_t limit_arg(json_t *args, int64_t def)
{
	json_t *l = json_object_get(args, "limit");
	if (json_is_integer(l) && json_integer_value(l) > 0 && json_integer_value(l) <= 100000)
		return json_integer_value(l);
	return def;
}

static json_t *column_json(sqlite3_stmt *s, int i)
{
	switch (sqlite3_column_type(s, i)) {
	case SQLITE_INTEGER:
		return json_integer(sqlite3_column_int64(s, i));
	case SQLITE_NULL:
		return json_null();
	case SQLITE_FLOAT:
		return json_real(sqlite3_column_double(s, i));
	default:
		return json_stringn((const char *)sqlite3_column_text(s, i), (size_t)sqlite3_column_bytes(s, i));
	}
}

static json_t *rows_json(struct control *c, const char *sql, int64_t limit)
{
	sqlite3_stmt *s = store_stmt(c->d->st, sql);
	if (!s)
		return NULL;
	sqlite3_bind_int64(s, 1, limit);
	json_t *arr = json_array();
	while (sqlite3_step(s) == SQLITE_ROW) {
		json_t *o = json_object();
		for (int i = 0; i < sqlite3_column_count(s); i++)
			json_object_set_new(o, sqlite3_column_name(s, i), column_json(s, i));
		json_array_append_new(arr, o);
	}
	sqlite3_reset(s);
	return arr;
}

static json_t *cmd_batches(struct control *c, json_t *args)
{
	json_t *arr = rows_json(c, "SELECT id, state, rows, bytes, attempts, created_at, sent_at, answered_at, completed_at,"
				   " target_batch_id, target_status, successful, not_found, failed, http_status, last_error"
				   " FROM batches ORDER BY id DESC LIMIT ?", limit_arg(args, 20));
	return arr ? ok_reply(json_pack("{s:o}", "batches", arr)) : error_reply("state database error");
}

static json_t *cmd_dead(struct control *c, json_t *args)
{
	json_t *arr = rows_json(c, "SELECT id, profile, attr, value, batch_id, reason, attempts, last_answer, created_at"
				   " FROM dead_letters ORDER BY id DESC LIMIT ?", limit_arg(args, 50));
	if (!arr)
		return error_reply("state database error");
	json_t *r = json_pack("{s:o, s:I}", "dead_letters", arr, "total",
			      (json_int_t)store_query_int(c->d->st, "SELECT count(*) FROM dead_letters", 0));
	return ok_reply(r);
}

static json_t *cmd_retry_dead(struct control *c, json_t *args)
{
	struct store *st = c->d->st;
	json_t *ids = json_object_get(args, "ids");
	bool all = json_is_true(json_object_get(args, "all")) || !ids;
	struct stage sg;
	struct attrset one;
	int64_t n = 0;
	int r = 0;
	if (ids && !json_is_array(ids))
		return error_reply("ids must be an array of dead letter ids");
	stage_init(&sg, st);
	attrset_init(&one);
	if (store_begin(st) < 0) {
		r = -EIO;
		goto out;
	}
	sqlite3_stmt *q = store_stmt(st, "SELECT id, profile, attr, value FROM dead_letters ORDER BY id");
	sqlite3_stmt *del = store_stmt(st, "DELETE FROM dead_letters WHERE id = ?");
	if (!q || !del) {
		r = -EIO;
		goto out;
	}
	while (r == 0 && sqlite3_step(q) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(q, 0);
		if (!all) {
			bool wanted = false;
			size_t i;
			json_t *v;
			json_array_foreach(ids, i, v)
				if (json_is_integer(v) && json_integer_value(v) == id)
					wanted = true;
			if (!wanted)
				continue;
		}
		const char *attr = (const char *)sqlite3_column_text(q, 2);
		int64_t aid = store_attr_id(st, attr, strlen(attr));
		if (aid < 0) {
			r = (int)aid;
			break;
		}
		attrset_clear(&one);
		attrset_put(&one, (uint32_t)aid, (const char *)sqlite3_column_text(q, 3), (uint32_t)sqlite3_column_bytes(q, 3));
		r = stage_restore(&sg, (const char *)sqlite3_column_text(q, 1), &one);
		sqlite3_reset(del);
		sqlite3_bind_int64(del, 1, id);
		if (r == 0 && sqlite3_step(del) != SQLITE_DONE)
			r = -EIO;
		n++;
	}
	sqlite3_reset(q);
	sqlite3_reset(del);
	if (r == 0 && store_commit(st) < 0)
		r = -EIO;
out:
	if (r < 0)
		store_rollback(st);
	stage_finish(&sg);
	attrset_finish(&one);
	if (r < 0)
		return error_reply("cannot re-queue dead letters: %s", sqlite3_errmsg(st->db));
	log_info("msg=\"dead letters re-queued\" count=%lld", (long long)n);
	sender_kick(c->d->sender);
	return ok_reply(json_pack("{s:I}", "requeued", (json_int_t)n));
}

static json_t *cmd_rescan(struct control *c, json_t *args)
{
	const char *name = json_string_value(json_object_get(args, "source"));
	int n = 0;
	for (size_t i = 0; i < c->d->n_sources; i++) {
		struct source *s = c->d->sources[i];
		if (name && strcmp(name, s->cfg->name) != 0)
			continue;
		if (source_rescan(s) < 0)
			return error_reply("cannot scan source %s: %s", s->cfg->name, s->stats.last_error);
		n++;
	}
	if (name && n == 0)
		return error_reply("no source named \"%s\"", name);
	return ok_reply(json_pack("{s:i}", "sources_scanned", n));
}

static json_t *cmd_metrics(struct control *c)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return error_reply("out of memory");
	struct daemon *d = c->d;
	struct store *st = d->st;
	fprintf(f, "# HELP tpsync_queue_pending_profiles Profiles with staged changes not yet sent.\n"
		   "# TYPE tpsync_queue_pending_profiles gauge\n");
	fprintf(f, "tpsync_queue_pending_profiles %lld\n",
		(long long)store_query_int(st, "SELECT count(*) FROM profiles WHERE pending IS NOT NULL", 0));
	int64_t oldest = store_query_int(st, "SELECT min(pending_since) FROM profiles WHERE pending IS NOT NULL", 0);
	fprintf(f, "# HELP tpsync_oldest_pending_age_seconds Age of the oldest unsent change.\n"
		   "# TYPE tpsync_oldest_pending_age_seconds gauge\n");
	fprintf(f, "tpsync_oldest_pending_age_seconds %.3f\n", oldest ? (double)(now_ms() - oldest) / 1000.0 : 0.0);
	fprintf(f, "# HELP tpsync_batches Batches by state.\n# TYPE tpsync_batches gauge\n");
	static const char *const states[] = { "ready", "posting", "submitted", "complete", "stuck", "dead", "split", "unconfirmed" };
	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
		sqlite3_stmt *s = store_stmt(st, "SELECT count(*) FROM batches WHERE state = ?");
		int64_t n = 0;
		if (s) {
			sqlite3_bind_text(s, 1, states[i], -1, SQLITE_STATIC);
			if (sqlite3_step(s) == SQLITE_ROW)
				n = sqlite3_column_int64(s, 0);
			sqlite3_reset(s);
		}
		fprintf(f, "tpsync_batches{state=\"%s\"} %lld\n", states[i], (long long)n);
	}
	fprintf(f, "# HELP tpsync_dead_letters Values that could not be delivered.\n# TYPE tpsync_dead_letters gauge\n");
	fprintf(f, "tpsync_dead_letters %lld\n", (long long)store_query_int(st, "SELECT count(*) FROM dead_letters", 0));
	fprintf(f, "# HELP tpsync_rows_total Rows read from sources, by outcome.\n# TYPE tpsync_rows_total counter\n");
	for (size_t i = 0; i < d->n_sources; i++) {
		struct source_stats *ss = &d->sources[i]->stats;
		const char *n = d->sources[i]->cfg->name;
		fprintf(f, "tpsync_rows_total{source=\"%s\",outcome=\"read\"} %lld\n", n, (long long)ss->rows_read);
		fprintf(f, "tpsync_rows_total{source=\"%s\",outcome=\"staged\"} %lld\n", n, (long long)ss->rows_staged);
		fprintf(f, "tpsync_rows_total{source=\"%s\",outcome=\"rejected\"} %lld\n", n, (long long)ss->rows_rejected);
	}
	sender_metrics(d->sender, f);
	if (fclose(f) != 0) {
		free(text);
		return error_reply("out of memory");
	}
	json_t *r = ok_reply(json_pack("{s:s}", "text", text));
	free(text);
	return r;
}

static bool is_mutating(const char *cmd)
{
	static const char *const names[] = { "retry-dead", "pause", "resume", "flush", "rescan", "reload", NULL };
	for (int i = 0; names[i]; i++)
		if (strcmp(cmd, names[i]) == 0)
			return true;
	return false;
}

static json_t *dispatch(struct conn *cn, json_t *req)
{
	struct control *c = cn->c;
	const char *cmd;
	json_t *args;
	char why[128];
	if (control_check_request(req, &cmd, &args, why, sizeof(why)) < 0)
		return error_reply("%s", why);
	bool may_mutate = cn->peer.uid == 0 || cn->peer.uid == geteuid() ||
			  (c->d->cfg->control.mutating == MUTATING_GROUP && cn->peer.gid == c->gid);
	if (is_mutating(cmd) && !may_mutate) {
		log_warn("msg=\"control command refused\" cmd=%s peer_uid=%u", cmd, (unsigned)cn->peer.uid);
		return error_reply("permission denied: \"%s\" needs root or the daemon's user%s", cmd,
				   c->d->cfg->control.mutating == MUTATING_GROUP ? " or group" : "");
	}
	if (strcmp(cmd, "status") == 0)
		return cmd_status(c);
	if (strcmp(cmd, "sources") == 0)
		return cmd_sources(c);
	if (strcmp(cmd, "batches") == 0)
		return cmd_batches(c, args);
	if (strcmp(cmd, "dead") == 0)
		return cmd_dead(c, args);
	if (strcmp(cmd, "retry-dead") == 0)
		return cmd_retry_dead(c, args);
	if (strcmp(cmd, "metrics") == 0)
		return cmd_metrics(c);
	if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0) {
		sender_set_paused(c->d->sender, cmd[0] == 'p');
		return ok_reply(NULL);
	}
	if (strcmp(cmd, "flush") == 0) {
		sender_flush(c->d->sender);
		return ok_reply(NULL);
	}
	if (strcmp(cmd, "rescan") == 0)
		return cmd_rescan(c, args);
	if (strcmp(cmd, "reload") == 0) {
		int r = daemon_reload(c->d);
		return r == 0 ? ok_reply(NULL) : error_reply("reload failed: %s", c->d->last_error);
	}
	return error_reply("unknown command \"%s\"", cmd);
}

static void conn_free(struct conn *cn)
{
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
	while ((line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF))) {
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
	}
	if (!cn->is_closing && evbuffer_get_length(in) > CONTROL_MAX_LINE) {
		send_reply(cn, error_reply("request too long"));
		start_closing(cn);
	}
	if (cn->is_closing)
		evbuffer_drain(in, evbuffer_get_length(in));
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct conn *cn = arg;
	if (cn->is_closing)
		shutdown(bufferevent_getfd(bev), SHUT_WR);
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
	cn->bev = bufferevent_socket_new(c->d->base, fd, BEV_OPT_CLOSE_ON_FREE);
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
	if (bufferevent_enable(cn->bev, EV_READ | EV_WRITE) < 0)
		conn_free(cn);
}

struct control *control_create(struct daemon *d, const char *path)
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
	c->d = d;
	struct stat sb;
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			log_err("msg=\"control socket path exists and is not a socket\" path=\"%s\"", path);
			goto fail;
		}
		unlink(path); /* stale socket of an earlier run */
	}
	mode_t old = umask(0117); /* socket file 0660 */
	c->listener = evconnlistener_new_bind(d->base, on_accept, c, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
					      (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (!c->listener) {
		log_err("msg=\"cannot bind control socket\" path=\"%s\" error=\"%s\"", path, strerror(errno));
		goto fail;
	}
	c->gid = getegid();
	if (d->cfg->control.group) {
		struct group *gr = getgrnam(d->cfg->control.group);
		if (!gr) {
			log_err("msg=\"control.group does not exist\" group=\"%s\"", d->cfg->control.group);
			goto fail;
		}
		if (chown(path, (uid_t)-1, gr->gr_gid) < 0) {
			log_err("msg=\"cannot give the control socket to its group\" group=\"%s\" error=\"%s\"",
				d->cfg->control.group, strerror(errno));
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
	if (c->listener) {
		evconnlistener_free(c->listener);
		unlink(path);
	}
	free(c->path);
	free(c);
	return NULL;
}

void control_destroy(struct control *c)
{
	if (!c)
		return;
	while (c->conns)
		conn_free(c->conns);
	if (c->listener) {
		evconnlistener_free(c->listener);
		unlink(c->path);
	}
	free(c->path);
	free(c);
}
