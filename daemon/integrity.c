/* SPDX-License-Identifier: MIT */
/* The integrity check's thread. The loop only starts it and reads its result,
 * both under the mutex; the thread owns its SQLite connection (WAL lets it
 * read while the daemon writes). */
#include "integrity.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

#define MAX_PROBLEMS 20

enum check_state { CHECK_NONE, CHECK_RUNNING, CHECK_OK, CHECK_DAMAGED, CHECK_FAILED };

static const char *const state_names[] = { "none", "running", "ok", "damaged", "failed" };

struct integrity {
	char *path;
	pthread_mutex_t lock;
	pthread_t thread;
	bool has_thread;
	enum check_state state;
	int64_t started_at, finished_at;
	char *problems[MAX_PROBLEMS];
	int n_problems;
	sqlite3 *db; /* while running, for sqlite3_interrupt */
};

static void clear_problems(struct integrity *x)
{
	for (int i = 0; i < x->n_problems; i++)
		free(x->problems[i]);
	x->n_problems = 0;
}

static void add_problem(struct integrity *x, const char *text)
{
	if (x->n_problems < MAX_PROBLEMS && (x->problems[x->n_problems] = strdup(text ? text : "?")))
		x->n_problems++;
}

static void *run(void *arg)
{
	struct integrity *x = arg;
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	enum check_state result = CHECK_FAILED;
	int rc = sqlite3_open_v2(x->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
	pthread_mutex_lock(&x->lock);
	x->db = rc == SQLITE_OK ? db : NULL;
	pthread_mutex_unlock(&x->lock);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check(20)", -1, &s, NULL);
	bool is_ok = false;
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *line = (const char *)sqlite3_column_text(s, 0);
		is_ok = line && strcmp(line, "ok") == 0;
		if (!is_ok) {
			pthread_mutex_lock(&x->lock);
			add_problem(x, line);
			pthread_mutex_unlock(&x->lock);
		}
		rc = SQLITE_OK;
	}
	if (rc == SQLITE_DONE)
		result = is_ok ? CHECK_OK : CHECK_DAMAGED;
	pthread_mutex_lock(&x->lock);
	if (result == CHECK_FAILED)
		add_problem(x, db ? sqlite3_errmsg(db) : "cannot open the database");
	x->db = NULL;
	x->state = result;
	x->finished_at = clock_wall_ms();
	pthread_mutex_unlock(&x->lock);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return NULL;
}

struct integrity *integrity_create(const char *path)
{
	struct integrity *x = calloc(1, sizeof(*x));
	if (!x || !(x->path = strdup(path))) {
		free(x);
		return NULL;
	}
	pthread_mutex_init(&x->lock, NULL);
	return x;
}

void integrity_destroy(struct integrity *x)
{
	if (!x)
		return;
	pthread_mutex_lock(&x->lock);
	if (x->db)
		sqlite3_interrupt(x->db);
	pthread_mutex_unlock(&x->lock);
	if (x->has_thread)
		pthread_join(x->thread, NULL);
	clear_problems(x);
	pthread_mutex_destroy(&x->lock);
	free(x->path);
	free(x);
}

int integrity_start(struct integrity *x)
{
	pthread_mutex_lock(&x->lock);
	bool is_running = x->state == CHECK_RUNNING;
	pthread_mutex_unlock(&x->lock);
	if (is_running)
		return -EBUSY;
	if (x->has_thread) {
		pthread_join(x->thread, NULL); /* the last one, finished */
		x->has_thread = false;
	}
	pthread_mutex_lock(&x->lock);
	clear_problems(x);
	x->state = CHECK_RUNNING;
	x->started_at = clock_wall_ms();
	x->finished_at = 0;
	pthread_mutex_unlock(&x->lock);
	int r = pthread_create(&x->thread, NULL, run, x);
	if (r != 0) {
		pthread_mutex_lock(&x->lock);
		x->state = CHECK_FAILED;
		pthread_mutex_unlock(&x->lock);
		return -r;
	}
	x->has_thread = true;
	return 0;
}

json_t *integrity_status(struct integrity *x)
{
	pthread_mutex_lock(&x->lock);
	json_t *problems = json_array();
	for (int i = 0; problems && i < x->n_problems; i++)
		json_array_append_new(problems, json_string(x->problems[i]));
	json_t *o = json_pack("{s:s, s:I, s:I, s:o}", "state", state_names[x->state], "started_at",
			      (json_int_t)x->started_at, "finished_at", (json_int_t)x->finished_at, "problems", problems);
	pthread_mutex_unlock(&x->lock);
	return o;
}
