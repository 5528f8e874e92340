/* SPDX-License-Identifier: MIT */
#include "listen_addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int listen_addr_parse(const char *listen, char *addr, size_t size, int *port)
{
	const char *colon = strrchr(listen, ':');
	if (!colon || colon[1] == '\0')
		return -EINVAL;
	const char *host = listen;
	size_t host_len = (size_t)(colon - listen);
	if (host_len >= 2 && host[0] == '[' && host[host_len - 1] == ']') {
		host++;
		host_len -= 2;
	} else if (memchr(host, ':', host_len)) {
		return -EINVAL; /* an IPv6 address needs its brackets */
	}
	if (host_len >= size)
		return -EINVAL;
	char *end;
	errno = 0;
	long p = strtol(colon + 1, &end, 10);
	if (errno || *end || p < 1 || p > 65535)
		return -EINVAL;
	memcpy(addr, host, host_len);
	addr[host_len] = '\0';
	*port = (int)p;
	struct in6_addr a6;
	struct in_addr a4;
	if (host_len && inet_pton(AF_INET, addr, &a4) != 1 && inet_pton(AF_INET6, addr, &a6) != 1)
		return -EINVAL; /* an address, not a name: nothing may block on a lookup */
	return 0;
}
