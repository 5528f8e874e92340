/* SPDX-License-Identifier: MIT */
/* The delivery queue: the one owner of the batches, sends and echoes tables,
 * and of moving a profile's values from pending to in flight to accepted (the
 * mirror). A batch is cut as a range of pending_seq (see struct store), so
 * that cutting it writes no profile row; its values stay in flight until
 * Target has finished it, then they are the mirror (folded into accepted in
 * the background, queue_fold). Every step of a batch is its own committed
 * transaction, so what the sender acts on is always durable first:
 *
 *   queue_build ........ pending profiles become a ready batch (values in flight)
 *   queue_mark_posting . before its request leaves (after a crash: recovered)
 *   queue_accept ....... Target said success=true: awaiting its status
 *   queue_complete ..... its final status: the values that went through are
 *                        the mirror; or queue_requeue_stuck, queue_retry,
 *                        queue_split, queue_kill (dead letters), queue_poll_again
 *
 * A profile is in at most one batch that Target has not finished; a change
 * that comes meanwhile waits for it ("parked"), so batches never overtake one
 * another for a profile, whatever order Target processes them in.
 *
 * Functions return 0 (or an id or count) on success and a negative errno on
 * failure: -EIO for a database error (noted, see store_error; the transaction
 * is rolled back), -ENOMEM, -EINVAL for a corrupt stored blob. Nothing here
 * logs; the caller decides what a failure means. */
#ifndef TPSYNC_QUEUE_H
#define TPSYNC_QUEUE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "batch_state.h"
#include "config.h"
#include "store.h"

struct queue;

/* A queue over st (not owned). Returns NULL on ENOMEM. */
struct queue *queue_create(struct store *st);
void queue_destroy(struct queue *q);

/* Batches left "posting" by a crash had a request whose answer never came:
 * they go back to ready, and since Target may still apply them late, the
 * latest values of their profiles are sent once more at sent_at +
 * echo_delay_ms. *n counts them. */
int queue_recover(struct queue *q, int64_t echo_delay_ms, int64_t *n);

/* The oldest ready batch whose next attempt is due at now, or 0; *next_at
 * gets the earliest next attempt of any ready batch (0: none). */
int64_t queue_next_ready(struct queue *q, int64_t now, int64_t *next_at);
/* A ready batch created before created_before (to be given up), or 0. */
int64_t queue_expired_ready(struct queue *q, int64_t created_before);
/* When the oldest pending change that is in no batch yet was staged, or 0. */
int64_t queue_oldest_unbatched(struct queue *q);
/* Rows sent since since, and when the oldest of those sends was (now when
 * none), for the rolling rows-per-day budget. */
int queue_rows_sent(struct queue *q, int64_t since, int64_t *rows, int64_t *oldest);

/* How queue_build cuts. */
struct queue_build_opts {
	int64_t max_rows;  /* at most this many rows (and cfg->batch.max_rows) */
	bool only_if_full; /* cut nothing unless the batch is full */
	int body_fd;       /* >= 0: the body is written here, from its offset, while the rows are chosen */
};
/* What it cut. */
struct queue_cut {
	int64_t id;    /* the batch; 0: none */
	int64_t rows;  /* its rows; with none cut, the rows that could go now */
	int64_t bytes; /* its body's exact size; with none cut, that of those rows */
	bool is_full;  /* it holds as many rows or bytes as a batch may */
	bool has_body; /* its whole body is in body_fd (else see queue_write_body) */
};
/* Cuts the next ready batch from queued profiles, oldest change first, up to
 * the hold (a snapshot being read is not sent until it is known whole), with
 * at most min(o->max_rows, cfg->batch.max_rows) rows and an encoded body of at
 * most cfg->batch.max_bytes (computed exactly). A profile whose row alone is
 * too large is dead-lettered; one parked behind a batch Target has not
 * finished waits. In one transaction, which writes no profile row: the batch
 * is the range of their pending_seq. When the rows share the first one's
 * attributes (or a subset), the body is written to o->body_fd on the way
 * (cut->has_body). Returns 0 with *cut filled (cut->id 0: nothing queued, or
 * not full with o->only_if_full), or a negative errno (-ENOSPC and such: the
 * body's write failed). */
int queue_build(struct queue *q, const struct config *cfg, const struct queue_build_opts *o, struct queue_cut *cut);

/* Folds up to max_rows values of complete batches into accepted (the mirror
 * is the same before and after: this only keeps the state database's
 * pending index small). *is_more says whether there is more to fold. Returns
 * 0 or a negative errno. */
int queue_fold(struct queue *q, int64_t max_rows, bool *is_more);

/* Writes the request body of batch id to fd at its offset (see body_writer.h).
 * Returns the bytes written, or a negative errno (-ENOSPC, -EBADF, ...: the
 * write failed; -EINVAL: a corrupt header or row; -EIO). */
int64_t queue_write_body(struct queue *q, const struct config *cfg, int64_t id, int fd);

/* The header's attribute ids of batch id, ascending, into a malloc'd *ids
 * (the caller frees it). Returns 0, -ENOENT, -EIO, -ENOMEM, or -EINVAL. */
int queue_header_ids(struct queue *q, int64_t id, uint32_t **ids, size_t *n);

/* A request for batch id is about to leave at now with a body of bytes:
 * recorded durably first (and counted in the rows-per-day budget). */
int queue_mark_posting(struct queue *q, int64_t id, int64_t now, int64_t bytes);
/* The request could not be started after all: the batch is ready again. */
int queue_mark_ready(struct queue *q, int64_t id);

/* What the sender needs to know about one batch. */
struct queue_batch {
	enum batch_state state;
	int64_t created_at, answered_at, attempts, failures, rows, polls;
};
/* Fills *b for batch id. Returns 0, -ENOENT, or -EIO. */
int queue_get(struct queue *q, int64_t id, struct queue_batch *b);

/* Target accepted batch id for processing. With a status URL it waits for
 * its status (first poll at next_poll_at); without one it is complete and its
 * values are the mirror. target_batch_id may be NULL. */
int queue_accept(struct queue *q, int64_t id, const char *status_url, const char *target_batch_id,
		 int64_t next_poll_at);

/* A failed attempt: batch id is ready again at next_at, with http (0: none)
 * and why as its last answer and failures as its count of rejections. With
 * echo_due > 0 (the answer never came, so Target may still apply the request)
 * its profiles' latest values go out once more at echo_due. */
int queue_retry(struct queue *q, int64_t id, int64_t next_at, long http, const char *why, int64_t failures,
		int64_t echo_due);

/* The token was refused: batch id is ready again, and this attempt does not
 * count. */
int queue_auth_failed(struct queue *q, int64_t id);

/* Gives batch id up: every value that made it necessary becomes a dead
 * letter with reason and Target's answer, its profiles are released and it is
 * marked dead. echo_due as in queue_retry. */
int queue_kill(struct queue *q, int64_t id, const char *reason, const char *answer, int64_t echo_due);

/* Target answered 413: batch id's rows go to two ready batches of half the
 * rows each, and it is marked split. A one-row batch cannot be split: -E2BIG
 * (nothing changed). */
int queue_split(struct queue *q, int64_t id);

/* Calls each(arg, id, status_url, answered_at) for submitted batches whose
 * next poll is due at now, earliest first, until each returns false; *next_at gets the
 * first poll due later (0: none). Returns 0 or -EIO. */
int queue_due_polls(struct queue *q, int64_t now, bool (*each)(void *arg, int64_t id, const char *status_url, int64_t answered_at),
		    void *arg, int64_t *next_at);

/* Target's final word on batch id: complete, with its counts (-1: absent). */
struct queue_counts_at_target {
	int64_t consumed, successful, not_found, failed;
};
/* What became of the rows Target reported failed. */
struct queue_row_results {
	int64_t requeued; /* their profiles' latest values are pending again */
	int64_t dead;     /* failed max_failures times in a row: dead letters */
	int64_t unknown;  /* ids Target listed that the batch did not carry */
};
/* Hands each failed row's profile id to sink (as target_parse_status_fd
 * does); returns 0, or sink's or its own negative errno. */
typedef int queue_feed_fn(void *arg, int (*sink)(void *sink_arg, const char *profile, size_t len), void *sink_arg);
/* Completes batch id in one transaction: its values are the mirror, except
 * those of the rows feed (may be NULL) names as failed, which never are:
 * each one's values are queued again (at the queue's end), or after
 * max_failures failures in a row for that profile become dead letters. A
 * profile whose row went through starts counting anew. *res says what became
 * of them. */
int queue_complete(struct queue *q, int64_t id, const struct queue_counts_at_target *c, int64_t max_failures,
		   queue_feed_fn *feed, void *arg, struct queue_row_results *res);

/* No final status yet: poll batch id again at next_at, with why (may be
 * empty) as its last error. */
int queue_poll_again(struct queue *q, int64_t id, int64_t next_at, const char *why);

/* Batch id's status can no longer be had (Target forgot it, or it is older
 * than target.status_ttl): it is marked unconfirmed with why, and its values
 * are queued again rather than assumed delivered. *profiles counts them. */
int queue_unconfirm(struct queue *q, int64_t id, const char *why, int64_t *profiles);

/* Target reported batch id stuck: the latest values of its changed attributes
 * are sent again, once (a batch that was itself such a re-queue is
 * dead-lettered). */
int queue_requeue_stuck(struct queue *q, int64_t id);

/* Echoes due at now whose profiles are in no request: their latest values are
 * staged again, up to 10,000 at a time. *n counts them; *next_at gets when the
 * next echo is due (0: none; now + 1 when more are due at once). */
int queue_run_echoes(struct queue *q, int64_t now, int *n, int64_t *next_at);

/* Queues dead letters again (those with ids, n of them, or all when ids is
 * NULL); a value staged since is newer and wins. *count counts them. */
int queue_retry_dead(struct queue *q, const int64_t *ids, size_t n, int64_t *count);

/* The queue at a glance. */
struct queue_counts {
	int64_t pending_profiles;  /* queued, parked or held: in no batch yet */
	int64_t in_flight_profiles; /* in batches Target has not finished */
	int64_t oldest_pending_at; /* 0: none */
	int64_t batches[BATCH_STATE_COUNT];
	int64_t echoes;
	int64_t dead_letters;
};
/* Fills *c. with_all_states false counts only what is cheap to count
 * (ready, posting, submitted); the others stay 0. Returns 0 or -EIO. */
int queue_counts(struct queue *q, bool with_all_states, struct queue_counts *c);
/* Rows sent in the 24 hours before now. */
int64_t queue_rows_last_day(struct queue *q, int64_t now);

/* For tpsyncctl trace: batch id as a JSON object (as in queue_batches_json;
 * NULL when there is none), the batch whose range held pending_seq seq (the
 * narrowest: a split half rather than the whole; 0: none), and what Target
 * said of profile's row in batch id ("failed", or NULL: nothing listed). */
json_t *queue_batch_json(struct queue *q, int64_t id);
int64_t queue_batch_of_seq(struct queue *q, int64_t seq);
const char *queue_row_result(struct queue *q, const char *profile, int64_t id);

/* The newest limit batches (in state, when not NULL) as a JSON array (id,
 * state, rows, bytes, attempts, times, Target's batch id, status and counts,
 * last error); NULL on a database error or ENOMEM. The caller owns it. */
json_t *queue_batches_json(struct queue *q, int64_t limit, const enum batch_state *state);

#endif
