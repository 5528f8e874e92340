/* SPDX-License-Identifier: MIT */
/* A tiny assert helper for the unit tests: CHECK keeps going and counts failures,
 * the test's main returns check_result(). */
#ifndef TPSYNC_CHECK_H
#define TPSYNC_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;
static const char *check_case = "-"; /* the case running now (check_run) */

#define CHECK(cond)                                                                         \
	do {                                                                                \
		check_count++;                                                              \
		if (!(cond)) {                                                              \
			check_failures++;                                                   \
			fprintf(stderr, "%s:%d: [%s] check failed: %s\n", __FILE__, __LINE__, check_case, #cond); \
		}                                                                           \
	} while (0)

#define CHECK_STR(a, b)                                                                     \
	do {                                                                                \
		const char *a_ = (a), *b_ = (b);                                            \
		check_count++;                                                              \
		if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                    \
			check_failures++;                                                   \
			fprintf(stderr, "%s:%d: [%s] \"%s\" != \"%s\"\n", __FILE__, __LINE__, \
				check_case, a_ ? a_ : "(null)", b_ ? b_ : "(null)");        \
		}                                                                           \
	} while (0)

/* Runs one test case, a function with its own fixture, and names it when
 * any of its checks failed. */
static inline void check_run(const char *name, void (*fn)(void))
{
	int before = check_failures;
	check_case = name;
	fn();
	fprintf(stderr, "%s %s\n", check_failures > before ? "FAIL" : "ok  ", name);
	check_case = "-";
}
#define RUN(fn) check_run(#fn, fn)

static inline int check_result(const char *name)
{
	fprintf(stderr, "%s: %d checks, %d failed\n", name, check_count, check_failures);
	return check_failures ? 1 : 0;
}

#endif
