/* SPDX-License-Identifier: MIT */
/* The control socket server: framing, peer credentials and dispatch through a
 * table of commands that its creator hands in. It knows no command itself. */
#ifndef TPSYNC_CONTROL_H
#define TPSYNC_CONTROL_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "control_proto.h"

/* One command. run answers args (never NULL: {} when the request had none)
 * with a result object the server takes over, or returns NULL with the reason
 * in err (the request is refused). */
struct control_command {
	const char *name;
	bool is_mutating; /* needs root, the daemon's user or (control.mutating: group) its group */
	json_t *(*run)(void *arg, json_t *args, char *err, size_t size);
};

/* Checks that req is a well-formed request of this protocol version and returns
 * its command and arguments (borrowed from req; args may be NULL). Returns 0, or
 * -EINVAL with the reason in err. */
int control_check_request(json_t *req, const char **cmd, json_t **args, char *err, size_t size);

/* Binds the socket at path (mode 0660, group group if not NULL, replacing a
 * stale socket) on base and answers the commands of table (ended by a NULL
 * name), passing arg to them. Returns NULL with the reason logged. */
struct control *control_create(struct event_base *base, const char *path, const char *group,
			       enum mutating_policy mutating, const struct control_command *table, void *arg);
/* Who may run mutating commands, after a reload. */
void control_set_policy(struct control *c, enum mutating_policy mutating);
/* Closes every connection, removes the socket file. */
void control_destroy(struct control *c);

#endif
