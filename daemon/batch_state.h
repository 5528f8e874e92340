/* SPDX-License-Identifier: MIT */
/* The states of a batch, with the one table of their names: the state database
 * stores the names, the control socket shows them, tpsyncctl reads them. */
#ifndef TPSYNC_BATCH_STATE_H
#define TPSYNC_BATCH_STATE_H

/*   ready --(commit "posting")--> POST --> submitted --> status polls -->
 *   complete | stuck (re-queued once) | unconfirmed; or dead, or split (413). */
enum batch_state {
	BATCH_READY,       /* built, waiting for its (next) attempt */
	BATCH_POSTING,     /* a request is on the wire; after a crash: answer never came */
	BATCH_SUBMITTED,   /* Target accepted it; polling its status */
	BATCH_COMPLETE,    /* Target reported it complete */
	BATCH_STUCK,       /* Target reported it stuck; its rows were queued again */
	BATCH_DEAD,        /* given up: its values are dead letters */
	BATCH_SPLIT,       /* Target answered 413: its rows went to two halves */
	BATCH_UNCONFIRMED, /* no final status could be had */
	BATCH_STATE_COUNT
};

/* The state's name ("ready", ...). */
const char *batch_state_name(enum batch_state state);
/* The state called name; returns 0, or -EINVAL for an unknown name. */
int batch_state_parse(const char *name, enum batch_state *out);

#endif
