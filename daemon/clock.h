/* SPDX-License-Identifier: MIT */
/* The two clocks: wall time for what is stored and shown, monotonic time for
 * how long something took. */
#ifndef TPSYNC_CLOCK_H
#define TPSYNC_CLOCK_H

#include <stdint.h>

/* Wall-clock time in milliseconds since the epoch. */
int64_t clock_wall_ms(void);
/* Monotonic time in milliseconds (for durations only). */
int64_t clock_mono_ms(void);

#endif
