/* SPDX-License-Identifier: MIT */
/* Durations and sizes as written in the config file. */
#include "units.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

struct unit_scale {
	const char *suffix;
	int64_t scale;
};

static int parse_scaled(const char *text, const struct unit_scale *units,
			size_t n_units, int64_t bare_scale, int64_t *out)
{
	const char *p = text;
	int64_t value = 0;

	if (!isdigit((unsigned char)*p))
		return -EINVAL;
	while (isdigit((unsigned char)*p)) {
		int d = *p++ - '0';
		if (value > (INT64_MAX - d) / 10)
			return -ERANGE;
		value = value * 10 + d;
	}
	int64_t scale = -1;
	if (*p == '\0') {
		scale = bare_scale;
	} else {
		for (size_t i = 0; i < n_units; i++) {
			if (strcmp(p, units[i].suffix) == 0) {
				scale = units[i].scale;
				break;
			}
		}
	}
	if (scale < 0)
		return -EINVAL;
	if (value > INT64_MAX / scale)
		return -ERANGE;
	*out = value * scale;
	return 0;
}

int units_parse_duration(const char *text, int64_t *out)
{
	static const struct unit_scale units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	return parse_scaled(text, units, sizeof(units) / sizeof(units[0]), 1000, out);
}

int units_parse_size(const char *text, int64_t *out)
{
	static const struct unit_scale units[] = {
		{ "B", 1 }, { "KB", 1000 }, { "MB", 1000000 },
	};
	return parse_scaled(text, units, sizeof(units) / sizeof(units[0]), 1, out);
}

void units_format_duration(int64_t ms, char *buf, unsigned size)
{
	if (ms != 0 && ms % 86400000 == 0)
		snprintf(buf, size, "%lldd", (long long)(ms / 86400000));
	else if (ms != 0 && ms % 3600000 == 0)
		snprintf(buf, size, "%lldh", (long long)(ms / 3600000));
	else if (ms != 0 && ms % 60000 == 0)
		snprintf(buf, size, "%lldm", (long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(buf, size, "%llds", (long long)(ms / 1000));
	else
		snprintf(buf, size, "%lldms", (long long)ms);
}
