/* SPDX-License-Identifier: MIT */
/* The control socket: one JSON object per line each way (protocol version 1),
 * answered on the event loop. See doc/control-protocol.md. */
#ifndef TPSYNC_CONTROL_H
#define TPSYNC_CONTROL_H

#include "daemon.h"

#define CONTROL_PROTOCOL_VERSION 1
#define CONTROL_MAX_LINE 65536

#include <jansson.h>
#include <stddef.h>

/* Checks that req is a well-formed request of this protocol version and returns
 * its command and arguments (borrowed from req; args may be NULL). Returns 0, or
 * -EINVAL with the reason in err. */
int control_check_request(json_t *req, const char **cmd, json_t **args, char *err, size_t size);

/* Binds the socket at path (mode 0660, replacing a stale socket) and starts
 * answering. Returns NULL with the reason logged. */
struct control *control_create(struct daemon *d, const char *path);
/* Closes every connection, removes the socket file. */
void control_destroy(struct control *c);

#endif
