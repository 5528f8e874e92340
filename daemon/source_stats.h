/* SPDX-License-Identifier: MIT */
/* A source's counters, shown by tpsyncctl sources. The source owns them;
 * ingestion updates them for the files it reads on the source's behalf. */
#ifndef TPSYNC_SOURCE_STATS_H
#define TPSYNC_SOURCE_STATS_H

#include <stdbool.h>
#include <stdint.h>

struct source_stats {
	int64_t files;          /* files fully ingested since start */
	int64_t files_failed;
	int64_t rows_read;
	int64_t rows_staged;    /* rows that changed something */
	int64_t rows_rejected;
	int64_t last_file_at;
	int64_t profiles_missing; /* snapshots: this source's profiles absent from the last version */
	int64_t reads_torn;       /* files that changed while they were read (read again) */
	char last_file[256];      /* or, for a database, the position read up to */
	char last_error[512];
	bool is_row_error;        /* last_error is about one rejected row, not the source */
	/* the file being ingested now, if any */
	bool is_busy;
	char current[256];
	int64_t current_rows;
	int64_t current_started_at;
	int64_t current_bytes, current_size;
};

#endif
