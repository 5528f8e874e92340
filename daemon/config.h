/* SPDX-License-Identifier: MIT */
/* The daemon's configuration: parsed from YAML into plain structs, validated, with
 * every error reported as FILE:LINE:COL. */
#ifndef TPSYNC_CONFIG_H
#define TPSYNC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TARGET_MAX_ROWS 500000
#define TARGET_MAX_BYTES 50000000 /* the encoded body must stay under this */

enum id_type { ID_THIRD_PARTY, ID_PC };
/* What verification queues again when Target differs from the mirror. */
enum repair_policy {
	REPAIR_MISSING_OR_OLDER, /* missing at Target, or older there than our acceptance */
	REPAIR_ALWAYS,           /* also values changed in Target since (a page visit) */
	REPAIR_NEVER,            /* report only */
};

enum rows_mode { ROWS_FULL_PROFILE, ROWS_CHANGED_ONLY };
enum source_type { SOURCE_SPOOL, SOURCE_SNAPSHOT, SOURCE_SQLITE, SOURCE_POSTGRES };
enum after_action { AFTER_ARCHIVE, AFTER_DELETE };
enum mutating_policy { MUTATING_OWNER, MUTATING_GROUP };

struct column_rename {
	char *from;
	char *to;
};

struct source_config {
	char *name;
	enum source_type type;
	char *path;
	char *id_column;
	struct column_rename *columns;
	size_t n_columns;
	char **exclude;
	size_t n_exclude;
	enum after_action after;
	char delimiter;
	bool strict;
	/* database sources */
	char *query;          /* with a :cursor parameter */
	char *cursor_column;
	int64_t poll_ms;
	/* type: postgres */
	char *dsn;            /* libpq connection string, without a password */
	char *password_file;  /* NULL: $CREDENTIALS_DIRECTORY/NAME-password if present, else libpq's own */
	char *listen;         /* NOTIFY channel that wakes the source; NULL: poll only */
};

struct config {
	char *path; /* the file it was read from */
	struct {
		char *client_code;
		char *base_url;      /* without a trailing slash */
		int64_t api_version; /* 1 or 2 */
		enum id_type id_type;
		char *token_file;    /* NULL: no token (or $CREDENTIALS_DIRECTORY/target-token) */
		char *ca_file;
		int64_t timeout_ms;         /* for Target's answer once a request is sent */
		int64_t connect_timeout_ms;
		int64_t min_upload_speed;   /* bytes per second a body must at least move at */
		int64_t poll_interval_ms;   /* the first status poll; later ones back off */
		int64_t poll_max_ms;        /* the longest wait between two polls */
		int64_t status_ttl_ms;      /* how long a batch's status can be had */
		struct {
			bool is_set;              /* target.oauth given: tokens are made, not read */
			char *client_id;
			char *client_secret_file; /* NULL: $CREDENTIALS_DIRECTORY/oauth-secret */
			char *tenant;
			char *ims_url;
			char *admin_url;          /* without a trailing slash */
			char *scope;
			int64_t renew_before_ms;  /* a token expiring sooner than this is renewed */
		} oauth;
	} target;
	struct {
		char *database;
		bool quick_check; /* PRAGMA quick_check at start */
	} state;
	struct {
		char *socket;
		char *group;                   /* socket group; NULL: the daemon's */
		enum mutating_policy mutating; /* who may pause, reload, ... */
	} control;
	struct {
		int64_t max_rows;
		int64_t max_bytes;
		int64_t linger_ms;   /* quiet time after the newest change before a batch that is not full is cut */
		int64_t max_wait_ms; /* the longest a change waits for a batch to fill */
		int64_t max_in_flight;
		enum rows_mode rows;
	} batch;
	struct {
		int64_t initial_ms;
		int64_t max_ms;
		int64_t give_up_after_ms;
		int64_t max_failures; /* success=false answers before a batch is dead-lettered */
	} retry;
	struct {
		int64_t rows_per_day;           /* 0: no daily cap */
		int64_t calls_per_minute;       /* submissions and status polls together */
		int64_t poll_calls_per_minute;  /* the part of it status polls may use */
	} limits;
	struct {
		int64_t calls_per_minute;   /* the fetch API's own budget */
		int64_t min_age_ms;         /* values accepted more recently are not judged */
		enum repair_policy repair;  /* what a verification queues again */
		int64_t sample_per_hour;    /* a steady background sample (0: none) */
		char *canary_id;
		int64_t canary_timeout_ms;
	} verify;
	struct {
		char *listen; /* ADDR:PORT of the Prometheus endpoint; NULL: none */
	} metrics;
	struct {
		int64_t events;     /* staging events kept per profile (0: none) */
		int64_t max_age_ms; /* and for how long */
	} trace;
	struct source_config *sources;
	size_t n_sources;
};

/* Reads and validates path. On success returns 0 and a config the caller frees
 * with config_destroy(). On failure returns -EINVAL (or -ENOENT/-EIO when the file
 * cannot be read) and has printed each problem as "FILE:LINE:COL: message" to err
 * (which may be NULL to stay quiet). Warnings (valid but doubtful settings) are
 * printed to err as "FILE:LINE:COL: warning: ..." and do not fail the load. */
int config_load(const char *path, struct config **out, FILE *err);
/* The same, from len bytes of text; name is used in messages. */
int config_load_buffer(const char *name, const char *text, size_t len, struct config **out, FILE *err);
void config_destroy(struct config *cfg);

/* The name of a source type as in the configuration ("spool", "postgres", ...). */
const char *config_source_type_name(enum source_type type);

/* The source called name, or NULL. */
const struct source_config *config_find_source(const struct config *cfg, const char *name);

/* The attribute a source's column becomes: renamed by columns:, NULL when
 * exclude: drops it, else the column's own name. */
const char *config_column_attr(const struct source_config *src, const char *col);

#endif
