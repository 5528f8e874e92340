/* SPDX-License-Identifier: MIT */
/* ADDR:PORT as a listening address is written in the configuration. */
#ifndef TPSYNC_LISTEN_ADDR_H
#define TPSYNC_LISTEN_ADDR_H

#include <stddef.h>

/* Checks that listen is ADDR:PORT with ADDR a numeric address
 * ("127.0.0.1:9641", "[::1]:9641"), or ":9641" for every address, and splits
 * it into addr (size bytes; "" for every address) and port. A host name is
 * refused: resolving it could block. Returns 0 or -EINVAL. */
int listen_addr_parse(const char *listen, char *addr, size_t size, int *port);

#endif
