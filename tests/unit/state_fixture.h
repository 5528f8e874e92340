/* SPDX-License-Identifier: MIT */
/* A fresh state database in a temporary directory, for staging and batch tests. */
#ifndef TPSYNC_STATE_FIXTURE_H
#define TPSYNC_STATE_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "attrset.h"
#include "stage.h"
#include "store.h"

static char fixture_dir[64];

/* A new state database in a new temporary directory (one per test case). */
static struct store *fixture_store(void)
{
	snprintf(fixture_dir, sizeof(fixture_dir), "/tmp/tpsync-test-XXXXXX");
	if (!mkdtemp(fixture_dir))
		return NULL;
	char path[256], err[256];
	snprintf(path, sizeof(path), "%s/state.db", fixture_dir);
	struct store *st = store_create(path, 0, err, sizeof(err));
	if (!st)
		fprintf(stderr, "store_create: %s\n", err);
	return st;
}

static void fixture_cleanup(struct store *st)
{
	char cmd[300];
	store_destroy(st);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", fixture_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", fixture_dir);
}

static inline uint32_t attr(struct store *st, const char *name)
{
	return (uint32_t)store_attr_id(st, name, strlen(name));
}

/* Builds a set from "name=value" pairs (NULL-terminated). Values are views. */
static inline void set_of(struct store *st, struct attrset *s, const char *const *pairs)
{
	attrset_clear(s);
	for (; *pairs; pairs++) {
		const char *eq = strchr(*pairs, '=');
		char name[64];
		snprintf(name, sizeof(name), "%.*s", (int)(eq - *pairs), *pairs);
		attrset_put(s, attr(st, name), eq + 1, (uint32_t)strlen(eq + 1));
	}
}

/* The value of attribute name in set col (accepted, inflight, pending) of
 * profile id as staging means it (values of a complete batch are accepted
 * before they are folded in), copied into out; "" if absent, "(none)" if the
 * set is empty. */
static inline const char *column_value(struct store *st, const char *id, const char *col, const char *name, char *out, size_t size)
{
	struct stage sg;
	struct stage_view v;
	stage_init(&sg, st);
	stage_view_init(&v);
	snprintf(out, size, "(none)");
	if (stage_read(&sg, id, strlen(id), &v) == 1) {
		const struct attrset *set = strcmp(col, "accepted") == 0 ? &v.accepted
					    : strcmp(col, "inflight") == 0 ? &v.inflight : &v.pending;
		const struct attr_kv *kv = attrset_get(set, attr(st, name));
		if (set->n)
			snprintf(out, size, "%.*s", kv ? (int)kv->len : 0, kv ? kv->val : "");
	}
	stage_view_finish(&v);
	stage_finish(&sg);
	return out;
}

#endif
