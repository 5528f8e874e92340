/* SPDX-License-Identifier: MIT */
/* The control socket's wire format, shared by tpsyncd and tpsyncctl: one JSON
 * object per line each way, {"v":1,"cmd":"status","args":{...}} answered by
 * {"v":1,"ok":true,"result":{...}} or {"v":1,"ok":false,"error":"..."}. See
 * doc/control-protocol.md. */
#ifndef TPSYNC_CONTROL_PROTO_H
#define TPSYNC_CONTROL_PROTO_H

#define CONTROL_PROTOCOL_VERSION 1
#define CONTROL_MAX_LINE 65536

#endif
