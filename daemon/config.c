/* SPDX-License-Identifier: MIT */
/* Config loading: libyaml builds a node tree, and a table of key descriptors (name,
 * type, bounds, default) turns it into struct config. Every error names the file,
 * line and column of the node at fault; unknown keys are errors. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "build_config.h"
#if HAVE_LIBPQ
#include <libpq-fe.h>
#endif
#include "listen_addr.h"
#include "units.h"

enum key_type { K_STRING, K_INT, K_DURATION, K_SIZE, K_ENUM, K_BOOL, K_DELIM, K_STRLIST, K_RENAMES, K_MAPPING };

struct key_desc {
	const char *name;
	enum key_type type;
	size_t offset;             /* into struct config, or struct source_config */
	int64_t min, max;          /* for K_INT, K_DURATION, K_SIZE */
	const char *def;           /* default, parsed like a value; NULL: none */
	const char *const *choices; /* for K_ENUM, in enum order */
	const struct key_desc *sub; /* for K_MAPPING: its keys (offsets into the same struct) */
	size_t seen_offset;         /* for K_MAPPING: a bool set when the mapping is given */
	bool required;
};

static const char *const id_types[] = { "thirdPartyId", "pcId", NULL };
static const char *const rows_modes[] = { "full_profile", "changed_only", NULL };
static const char *const source_types[] = { "spool", "snapshot", "sqlite", "postgres", NULL };
static const char *const after_actions[] = { "archive", "delete", NULL };
static const char *const mutating_policies[] = { "owner", "group", NULL };
static const char *const repair_policies[] = { "missing_or_older", "always", "never", NULL };

#define C(field) offsetof(struct config, field)
#define S(field) offsetof(struct source_config, field)
#define DAY (86400LL * 1000)

/* K_STRLIST and K_RENAMES fields are a pointer followed by its count. */
_Static_assert(offsetof(struct source_config, n_exclude) ==
	       offsetof(struct source_config, exclude) + sizeof(char **), "exclude layout");
_Static_assert(offsetof(struct source_config, n_columns) ==
	       offsetof(struct source_config, columns) + sizeof(void *), "columns layout");

struct section {
	const char *name;
	const struct key_desc *keys;
};

static const struct key_desc oauth_keys[] = {
	{ .name = "client_id", .type = K_STRING, .offset = C(target.oauth.client_id), .required = true },
	{ .name = "client_secret_file", .type = K_STRING, .offset = C(target.oauth.client_secret_file) },
	{ .name = "tenant", .type = K_STRING, .offset = C(target.oauth.tenant), .required = true },
	{ .name = "ims_url", .type = K_STRING, .offset = C(target.oauth.ims_url),
	  .def = "https://ims-na1.adobelogin.com/ims/token/v3" },
	{ .name = "admin_url", .type = K_STRING, .offset = C(target.oauth.admin_url), .def = "https://mc.adobe.io" },
	{ .name = "scope", .type = K_STRING, .offset = C(target.oauth.scope),
	  .def = "openid,AdobeID,target_sdk,additional_info.projectedProductContext,read_organizations,additional_info.roles" },
	{ .name = "renew_before", .type = K_DURATION, .offset = C(target.oauth.renew_before_ms), .min = 1000,
	  .max = 30 * DAY, .def = "1h" },
	{ .name = NULL }
};

static const struct key_desc target_keys[] = {
	{ .name = "client_code", .type = K_STRING, .offset = C(target.client_code), .required = true },
	{ .name = "base_url", .type = K_STRING, .offset = C(target.base_url) },
	{ .name = "api_version", .type = K_INT, .offset = C(target.api_version), .min = 1, .max = 2, .def = "2" },
	{ .name = "id_type", .type = K_ENUM, .offset = C(target.id_type), .def = "thirdPartyId", .choices = id_types },
	{ .name = "token_file", .type = K_STRING, .offset = C(target.token_file) },
	{ .name = "oauth", .type = K_MAPPING, .sub = oauth_keys, .seen_offset = C(target.oauth.is_set) },
	{ .name = "ca_file", .type = K_STRING, .offset = C(target.ca_file) },
	{ .name = "timeout", .type = K_DURATION, .offset = C(target.timeout_ms), .min = 1000, .max = DAY, .def = "60s" },
	{ .name = "connect_timeout", .type = K_DURATION, .offset = C(target.connect_timeout_ms), .min = 100, .max = 600000, .def = "10s" },
	{ .name = "min_upload_speed", .type = K_SIZE, .offset = C(target.min_upload_speed), .min = 1000, .max = 1000000000, .def = "100KB" },
	{ .name = "poll_interval", .type = K_DURATION, .offset = C(target.poll_interval_ms), .min = 10, .max = DAY, .def = "30s" },
	{ .name = "poll_max", .type = K_DURATION, .offset = C(target.poll_max_ms), .min = 10, .max = DAY, .def = "10m" },
	{ .name = "status_ttl", .type = K_DURATION, .offset = C(target.status_ttl_ms), .min = 1000, .max = 30 * DAY, .def = "24h" },
	{ .name = NULL }
};
static const struct key_desc state_keys[] = {
	{ .name = "database", .type = K_STRING, .offset = C(state.database), .def = "/var/lib/tpsyncd/state.db" },
	{ .name = "quick_check", .type = K_BOOL, .offset = C(state.quick_check), .def = "true" },
	{ .name = NULL }
};
static const struct key_desc control_keys[] = {
	{ .name = "socket", .type = K_STRING, .offset = C(control.socket), .def = "/run/tpsyncd/control.sock" },
	{ .name = "group", .type = K_STRING, .offset = C(control.group) },
	{ .name = "mutating", .type = K_ENUM, .offset = C(control.mutating), .def = "owner", .choices = mutating_policies },
	{ .name = NULL }
};
static const struct key_desc batch_keys[] = {
	{ .name = "max_rows", .type = K_INT, .offset = C(batch.max_rows), .min = 1, .max = TARGET_MAX_ROWS, .def = "500000" },
	{ .name = "max_bytes", .type = K_SIZE, .offset = C(batch.max_bytes), .min = 262144, .max = TARGET_MAX_BYTES - 1, .def = "49000000" },
	{ .name = "linger", .type = K_DURATION, .offset = C(batch.linger_ms), .min = 0, .max = DAY, .def = "5s" },
	{ .name = "max_wait", .type = K_DURATION, .offset = C(batch.max_wait_ms), .min = 0, .max = DAY, .def = "1m" },
	{ .name = "max_in_flight", .type = K_INT, .offset = C(batch.max_in_flight), .min = 1, .max = 16, .def = "2" },
	{ .name = "rows", .type = K_ENUM, .offset = C(batch.rows), .def = "full_profile", .choices = rows_modes },
	{ .name = NULL }
};
static const struct key_desc retry_keys[] = {
	{ .name = "initial", .type = K_DURATION, .offset = C(retry.initial_ms), .min = 1, .max = DAY, .def = "1s" },
	{ .name = "max", .type = K_DURATION, .offset = C(retry.max_ms), .min = 1, .max = DAY, .def = "10m" },
	{ .name = "give_up_after", .type = K_DURATION, .offset = C(retry.give_up_after_ms), .min = 1000, .max = 365 * DAY, .def = "7d" },
	{ .name = "max_failures", .type = K_INT, .offset = C(retry.max_failures), .min = 1, .max = 1000, .def = "5" },
	{ .name = NULL }
};
static const struct key_desc limits_keys[] = {
	{ .name = "rows_per_day", .type = K_INT, .offset = C(limits.rows_per_day), .min = 0, .max = INT64_MAX / 2, .def = "0" },
	{ .name = "calls_per_minute", .type = K_INT, .offset = C(limits.calls_per_minute), .min = 1, .max = 1000, .def = "50" },
	{ .name = "poll_calls_per_minute", .type = K_INT, .offset = C(limits.poll_calls_per_minute), .min = 0, .max = 1000, .def = "0" },
	{ .name = NULL }
};
static const struct key_desc source_keys[] = {
	{ .name = "name", .type = K_STRING, .offset = S(name), .required = true },
	{ .name = "type", .type = K_ENUM, .offset = S(type), .choices = source_types, .required = true },
	{ .name = "path", .type = K_STRING, .offset = S(path) },
	{ .name = "id_column", .type = K_STRING, .offset = S(id_column), .required = true },
	{ .name = "columns", .type = K_RENAMES, .offset = S(columns) },
	{ .name = "exclude", .type = K_STRLIST, .offset = S(exclude) },
	{ .name = "after", .type = K_ENUM, .offset = S(after), .def = "archive", .choices = after_actions },
	{ .name = "delimiter", .type = K_DELIM, .offset = S(delimiter), .def = "," },
	{ .name = "strict", .type = K_BOOL, .offset = S(strict), .def = "false" },
	{ .name = "query", .type = K_STRING, .offset = S(query) },
	{ .name = "cursor_column", .type = K_STRING, .offset = S(cursor_column) },
	{ .name = "poll", .type = K_DURATION, .offset = S(poll_ms), .min = 100, .max = DAY, .def = "30s" },
	{ .name = "dsn", .type = K_STRING, .offset = S(dsn) },
	{ .name = "password_file", .type = K_STRING, .offset = S(password_file) },
	{ .name = "listen", .type = K_STRING, .offset = S(listen) },
	{ .name = NULL }
};

static const struct key_desc verify_keys[] = {
	{ .name = "calls_per_minute", .type = K_INT, .offset = C(verify.calls_per_minute), .min = 1, .max = 6000, .def = "30" },
	{ .name = "min_age", .type = K_DURATION, .offset = C(verify.min_age_ms), .min = 0, .max = 30 * DAY, .def = "1h" },
	{ .name = "repair", .type = K_ENUM, .offset = C(verify.repair), .def = "missing_or_older", .choices = repair_policies },
	{ .name = "sample_per_hour", .type = K_INT, .offset = C(verify.sample_per_hour), .min = 0, .max = 360000, .def = "0" },
	{ .name = "canary_id", .type = K_STRING, .offset = C(verify.canary_id), .def = "tpsync-canary" },
	{ .name = "canary_timeout", .type = K_DURATION, .offset = C(verify.canary_timeout_ms), .min = 1000, .max = 2 * DAY, .def = "2h" },
	{ .name = NULL }
};
static const struct key_desc trace_keys[] = {
	{ .name = "events", .type = K_INT, .offset = C(trace.events), .min = 0, .max = 1000, .def = "20" },
	{ .name = "max_age", .type = K_DURATION, .offset = C(trace.max_age_ms), .min = 1000, .max = 3650 * DAY, .def = "30d" },
	{ .name = NULL }
};

static const struct key_desc metrics_keys[] = {
	{ .name = "listen", .type = K_STRING, .offset = C(metrics.listen) },
	{ .name = NULL }
};

static const struct section sections[] = {
	{ "target", target_keys }, { "state", state_keys }, { "control", control_keys },
	{ "batch", batch_keys }, { "retry", retry_keys }, { "limits", limits_keys },
	{ "verify", verify_keys }, { "trace", trace_keys }, { "metrics", metrics_keys },
	{ NULL, NULL }
};

/* Keys a section (or a source) may have: the size of the "seen" sets. */
#define MAX_KEYS 32
_Static_assert(sizeof(target_keys) / sizeof(target_keys[0]) <= MAX_KEYS, "target_keys: raise MAX_KEYS");
_Static_assert(sizeof(oauth_keys) / sizeof(oauth_keys[0]) <= MAX_KEYS, "oauth_keys: raise MAX_KEYS");
_Static_assert(sizeof(state_keys) / sizeof(state_keys[0]) <= MAX_KEYS, "state_keys: raise MAX_KEYS");
_Static_assert(sizeof(control_keys) / sizeof(control_keys[0]) <= MAX_KEYS, "control_keys: raise MAX_KEYS");
_Static_assert(sizeof(batch_keys) / sizeof(batch_keys[0]) <= MAX_KEYS, "batch_keys: raise MAX_KEYS");
_Static_assert(sizeof(retry_keys) / sizeof(retry_keys[0]) <= MAX_KEYS, "retry_keys: raise MAX_KEYS");
_Static_assert(sizeof(limits_keys) / sizeof(limits_keys[0]) <= MAX_KEYS, "limits_keys: raise MAX_KEYS");
_Static_assert(sizeof(source_keys) / sizeof(source_keys[0]) <= MAX_KEYS, "source_keys: raise MAX_KEYS");
_Static_assert(sizeof(verify_keys) / sizeof(verify_keys[0]) <= MAX_KEYS, "verify_keys: raise MAX_KEYS");
_Static_assert(sizeof(trace_keys) / sizeof(trace_keys[0]) <= MAX_KEYS, "trace_keys: raise MAX_KEYS");
_Static_assert(sizeof(metrics_keys) / sizeof(metrics_keys[0]) <= MAX_KEYS, "metrics_keys: raise MAX_KEYS");

struct loader {
	const char *path;
	FILE *err;
	yaml_document_t doc;
	int errors;
};

static void report(struct loader *l, const yaml_mark_t *mark, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void report(struct loader *l, const yaml_mark_t *mark, const char *fmt, ...)
{
	l->errors++;
	if (!l->err)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(l->err, "%s:%zu:%zu: ", l->path, mark ? mark->line + 1 : 1, mark ? mark->column + 1 : 1);
	vfprintf(l->err, fmt, ap);
	fputc('\n', l->err);
	va_end(ap);
}

static void warn(struct loader *l, const yaml_mark_t *mark, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void warn(struct loader *l, const yaml_mark_t *mark, const char *fmt, ...)
{
	if (!l->err)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(l->err, "%s:%zu:%zu: warning: ", l->path, mark ? mark->line + 1 : 1,
		mark ? mark->column + 1 : 1);
	vfprintf(l->err, fmt, ap);
	fputc('\n', l->err);
	va_end(ap);
}

static yaml_node_t *node(struct loader *l, int id)
{
	return yaml_document_get_node(&l->doc, id);
}

static const char *scalar(yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

/* Stores text as the value of key d at base. mark locates the text for errors. */
static int set_scalar(struct loader *l, const struct key_desc *d, void *base, const char *text,
		      const yaml_mark_t *mark)
{
	char *field = (char *)base + d->offset;
	int64_t v;
	int r;

	switch (d->type) {
	case K_STRING: {
		char *copy = strdup(text);
		if (!copy)
			return -ENOMEM;
		free(*(char **)field);
		*(char **)field = copy;
		return 0;
	}
	case K_INT: {
		char *end;
		errno = 0;
		long long n = strtoll(text, &end, 10);
		if (errno || end == text || *end) {
			report(l, mark, "%s: expected an integer, got \"%s\"", d->name, text);
			return -EINVAL;
		}
		v = n;
		break;
	}
	case K_DURATION:
		r = units_parse_duration(text, &v);
		if (r < 0) {
			report(l, mark, "%s: expected a duration like 500ms, 5s, 10m, 2h or 7d, got \"%s\"",
			       d->name, text);
			return -EINVAL;
		}
		break;
	case K_SIZE:
		r = units_parse_size(text, &v);
		if (r < 0) {
			report(l, mark, "%s: expected a size in bytes, KB or MB, got \"%s\"", d->name, text);
			return -EINVAL;
		}
		break;
	case K_ENUM:
		for (int i = 0; d->choices[i]; i++) {
			if (strcmp(text, d->choices[i]) == 0) {
				*(int *)field = i;
				return 0;
			}
		}
		{
			char list[256] = "";
			for (int i = 0; d->choices[i]; i++) {
				strncat(list, i ? ", " : "", sizeof(list) - strlen(list) - 1);
				strncat(list, d->choices[i], sizeof(list) - strlen(list) - 1);
			}
			report(l, mark, "%s: \"%s\" is not one of %s", d->name, text, list);
		}
		return -EINVAL;
	case K_BOOL:
		if (strcmp(text, "true") == 0 || strcmp(text, "yes") == 0) {
			*(bool *)field = true;
		} else if (strcmp(text, "false") == 0 || strcmp(text, "no") == 0) {
			*(bool *)field = false;
		} else {
			report(l, mark, "%s: expected true or false, got \"%s\"", d->name, text);
			return -EINVAL;
		}
		return 0;
	case K_DELIM:
		if (strcmp(text, ",") == 0 || strcmp(text, ";") == 0 || strcmp(text, "|") == 0 ||
		    strcmp(text, "\t") == 0) {
			*field = text[0];
			return 0;
		}
		report(l, mark, "%s: must be \",\", \";\", \"\\t\" or \"|\"", d->name);
		return -EINVAL;
	default:
		report(l, mark, "%s: expected a %s", d->name, d->type == K_STRLIST ? "list" : "mapping");
		return -EINVAL;
	}
	if (v < d->min || v > d->max) {
		if (d->type == K_DURATION) {
			char lo[32], hi[32];
			units_format_duration(d->min, lo, sizeof(lo));
			units_format_duration(d->max, hi, sizeof(hi));
			report(l, mark, "%s: %s is out of range (%s to %s)", d->name, text, lo, hi);
		} else {
			report(l, mark, "%s: %s is out of range (%lld to %lld)", d->name, text,
			       (long long)d->min, (long long)d->max);
		}
		return -EINVAL;
	}
	*(int64_t *)field = v;
	return 0;
}

static int set_defaults(struct loader *l, const struct key_desc *keys, void *base)
{
	for (const struct key_desc *d = keys; d->name; d++) {
		int r = d->def ? set_scalar(l, d, base, d->def, NULL) : 0;
		if (r < 0)
			return r;
	}
	return 0;
}

static int set_strlist(struct loader *l, const struct key_desc *d, void *base, yaml_node_t *n)
{
	if (n->type != YAML_SEQUENCE_NODE) {
		report(l, &n->start_mark, "%s: expected a list of column names", d->name);
		return -EINVAL;
	}
	char ***list = (char ***)((char *)base + d->offset);
	size_t *count = (size_t *)(list + 1);
	size_t len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	char **items = calloc(len ? len : 1, sizeof(*items));
	if (!items)
		return -ENOMEM;
	for (size_t i = 0; i < len; i++) {
		yaml_node_t *item = node(l, n->data.sequence.items.start[i]);
		if (!item || item->type != YAML_SCALAR_NODE) {
			report(l, item ? &item->start_mark : &n->start_mark, "%s: expected a column name", d->name);
			continue;
		}
		items[i] = strdup(scalar(item));
		if (!items[i]) {
			for (size_t j = 0; j < i; j++)
				free(items[j]);
			free(items);
			return -ENOMEM;
		}
	}
	*list = items;
	*count = len;
	return 0;
}

static int set_renames(struct loader *l, const struct key_desc *d, void *base, yaml_node_t *n)
{
	if (n->type != YAML_MAPPING_NODE) {
		report(l, &n->start_mark, "%s: expected a mapping of column: attribute", d->name);
		return -EINVAL;
	}
	struct column_rename **list = (struct column_rename **)((char *)base + d->offset);
	size_t *count = (size_t *)(list + 1);
	size_t len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
	struct column_rename *items = calloc(len ? len : 1, sizeof(*items));
	if (!items)
		return -ENOMEM;
	*list = items;
	for (size_t i = 0; i < len; i++) {
		yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
		yaml_node_t *k = node(l, p->key), *v = node(l, p->value);
		if (!k || !v || k->type != YAML_SCALAR_NODE || v->type != YAML_SCALAR_NODE) {
			report(l, k ? &k->start_mark : &n->start_mark,
			       "%s: each entry must be column: attributeName", d->name);
			continue;
		}
		items[i].from = strdup(scalar(k));
		items[i].to = strdup(scalar(v));
		*count = i + 1;
		if (!items[i].from || !items[i].to)
			return -ENOMEM;
	}
	*count = len;
	return 0;
}

/* Applies every pair of mapping n to base according to keys. */
static int apply_mapping(struct loader *l, const char *where, const struct key_desc *keys, void *base,
			 yaml_node_t *n, bool *seen)
{
	if (n->type != YAML_MAPPING_NODE) {
		report(l, &n->start_mark, "%s: expected a mapping", where);
		return 0;
	}
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(l, p->key), *v = node(l, p->value);
		if (!k || !v)
			continue;
		if (k->type != YAML_SCALAR_NODE) {
			report(l, &k->start_mark, "%s: keys must be plain names", where);
			continue;
		}
		const struct key_desc *d = keys;
		size_t idx = 0;
		while (d->name && strcmp(d->name, scalar(k)) != 0) {
			d++;
			idx++;
		}
		if (!d->name) {
			report(l, &k->start_mark, "unknown key \"%s\" in %s", scalar(k), where);
			continue;
		}
		if (seen[idx]) {
			report(l, &k->start_mark, "duplicate key \"%s\" in %s", scalar(k), where);
			continue;
		}
		seen[idx] = true;
		int r;
		if (d->type == K_STRLIST)
			r = set_strlist(l, d, base, v);
		else if (d->type == K_RENAMES)
			r = set_renames(l, d, base, v);
		else if (d->type == K_MAPPING) {
			bool sub_seen[MAX_KEYS] = { false };
			char sub_where[96];
			snprintf(sub_where, sizeof(sub_where), "%s.%s", where, d->name);
			*(bool *)((char *)base + d->seen_offset) = true;
			r = set_defaults(l, d->sub, base);
			if (r == 0)
				r = apply_mapping(l, sub_where, d->sub, base, v, sub_seen);
		}
		else if (v->type != YAML_SCALAR_NODE) {
			report(l, &v->start_mark, "%s: expected a single value", d->name);
			r = -EINVAL;
		} else
			r = set_scalar(l, d, base, scalar(v), &v->start_mark);
		if (r == -ENOMEM)
			return r;
	}
	size_t idx = 0;
	for (const struct key_desc *d = keys; d->name; d++, idx++)
		if (d->required && !seen[idx])
			report(l, &n->start_mark, "%s: missing required key \"%s\"", where, d->name);
	return 0;
}

const char *config_source_type_name(enum source_type type)
{
	return source_types[type];
}

/* A password must come from a file, never from the YAML. */
static void check_dsn(struct loader *l, struct source_config *src, yaml_node_t *item, const char *where)
{
#if HAVE_LIBPQ
	char *why = NULL;
	PQconninfoOption *opts = PQconninfoParse(src->dsn, &why);
	if (!opts) {
		report(l, &item->start_mark, "%s: dsn: %s", where, why ? strtok(why, "\n") : "out of memory");
		PQfreemem(why);
		return;
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val)
			report(l, &item->start_mark, "%s: dsn must not contain the password; put it in password_file "
						      "(or a systemd credential NAME-password)", where);
	PQconninfoFree(opts);
#else
	report(l, &item->start_mark, "%s: this tpsyncd was built without PostgreSQL support (meson -Dpostgres)", where);
#endif
}

static bool valid_source_name(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_' || *s == '-'))
			return false;
	return true;
}

/* The keys each source type needs or does not take. */
static void check_source_kind(struct loader *l, struct source_config *src, yaml_node_t *item, const char *where)
{
	bool is_db = src->type == SOURCE_SQLITE || src->type == SOURCE_POSTGRES;
	const char *type = config_source_type_name(src->type);
	if (src->type == SOURCE_POSTGRES) {
		if (!src->dsn)
			report(l, &item->start_mark, "%s: a postgres source needs dsn", where);
		if (src->path)
			report(l, &item->start_mark, "%s: a postgres source takes dsn, not path", where);
		if (src->dsn)
			check_dsn(l, src, item, where);
	} else {
		if (!src->path)
			report(l, &item->start_mark, "%s: missing required key \"path\"", where);
		if (src->dsn || src->password_file || src->listen)
			report(l, &item->start_mark, "%s: dsn, password_file and listen belong to postgres sources", where);
	}
	if (is_db) {
		if (!src->query || !src->cursor_column)
			report(l, &item->start_mark, "%s: a %s source needs query and cursor_column", where, type);
		else if (!strstr(src->query, ":cursor"))
			report(l, &item->start_mark, "%s: query must use the :cursor parameter", where);
		else if (strstr(src->query, "> :cursor"))
			warn(l, &item->start_mark, "%s: use \">= :cursor\": rows that share the last cursor value "
						    "but were committed later would be missed with \">\"", where);
	} else if (src->query || src->cursor_column) {
		report(l, &item->start_mark, "%s: query and cursor_column belong to database sources", where);
	}
}

static int load_sources(struct loader *l, struct config *cfg, yaml_node_t *n)
{
	if (n->type != YAML_SEQUENCE_NODE) {
		report(l, &n->start_mark, "sources: expected a list of sources");
		return 0;
	}
	size_t len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	cfg->sources = calloc(len ? len : 1, sizeof(*cfg->sources));
	if (!cfg->sources)
		return -ENOMEM;
	for (size_t i = 0; i < len; i++) {
		yaml_node_t *item = node(l, n->data.sequence.items.start[i]);
		struct source_config *src = &cfg->sources[i];
		bool seen[MAX_KEYS] = { false };
		cfg->n_sources = i + 1;
		int r = set_defaults(l, source_keys, src);
		if (r < 0)
			return r;
		if (!item)
			continue;
		char where[64];
		snprintf(where, sizeof(where), "sources[%zu]", i);
		if (apply_mapping(l, where, source_keys, src, item, seen) < 0)
			return -ENOMEM;
		if (src->name && !valid_source_name(src->name))
			report(l, &item->start_mark, "%s: name \"%s\" must match [a-z0-9_-]+", where, src->name);
		for (size_t j = 0; j < i && src->name; j++)
			if (cfg->sources[j].name && strcmp(cfg->sources[j].name, src->name) == 0)
				report(l, &item->start_mark, "%s: duplicate source name \"%s\"", where, src->name);
		if (src->id_column && !*src->id_column)
			report(l, &item->start_mark, "%s: id_column must not be empty", where);
		check_source_kind(l, src, item, where);
		for (size_t j = 0; j < src->n_exclude && src->id_column; j++)
			if (src->exclude[j] && strcmp(src->exclude[j], src->id_column) == 0)
				report(l, &item->start_mark, "%s: id_column \"%s\" cannot be excluded", where,
				       src->id_column);
	}
	return 0;
}

static int load_root(struct loader *l, struct config *cfg, yaml_node_t *root)
{
	bool seen_section[sizeof(sections) / sizeof(sections[0])] = { false };
	bool seen_sources = false;

	for (const struct section *s = sections; s->name; s++) {
		int r = set_defaults(l, s->keys, cfg);
		if (r < 0)
			return r;
	}
	if (!root) {
		report(l, NULL, "the file is empty; at least target.client_code is required");
		return 0;
	}
	if (root->type != YAML_MAPPING_NODE) {
		report(l, &root->start_mark, "expected a mapping of sections (target, state, ...)");
		return 0;
	}
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(l, p->key), *v = node(l, p->value);
		if (!k || !v)
			continue;
		if (k->type != YAML_SCALAR_NODE) {
			report(l, &k->start_mark, "section names must be plain names");
			continue;
		}
		if (strcmp(scalar(k), "sources") == 0) {
			if (seen_sources) {
				report(l, &k->start_mark, "duplicate section \"sources\"");
				continue;
			}
			seen_sources = true;
			if (load_sources(l, cfg, v) < 0)
				return -ENOMEM;
			continue;
		}
		const struct section *s = sections;
		while (s->name && strcmp(s->name, scalar(k)) != 0)
			s++;
		if (!s->name) {
			report(l, &k->start_mark, "unknown section \"%s\"", scalar(k));
			continue;
		}
		if (seen_section[s - sections]) {
			report(l, &k->start_mark, "duplicate section \"%s\"", s->name);
			continue;
		}
		seen_section[s - sections] = true;
		/* A section left empty (every key commented out) is YAML's null;
		 * target has required keys, so it says "expected a mapping". */
		if (s != sections && v->type == YAML_SCALAR_NODE && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
		    (!*scalar(v) || strcmp(scalar(v), "~") == 0 || strcmp(scalar(v), "null") == 0))
			continue;
		bool seen[MAX_KEYS] = { false };
		if (apply_mapping(l, s->name, s->keys, cfg, v, seen) < 0)
			return -ENOMEM;
	}
	if (!seen_section[0])
		report(l, &root->start_mark, "missing required section \"target\"");
	return 0;
}

static void validate(struct loader *l, struct config *cfg, yaml_node_t *root)
{
	const yaml_mark_t *mark = root ? &root->start_mark : NULL;
	if (cfg->target.client_code) {
		const char *c = cfg->target.client_code;
		bool ok = *c != '\0';
		for (; *c; c++)
			if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_')
				ok = false;
		if (!ok)
			report(l, mark, "target.client_code \"%s\" must be letters, digits, '-' or '_'",
			       cfg->target.client_code);
		if (!cfg->target.base_url) {
			size_t len = strlen(cfg->target.client_code) + 32;
			cfg->target.base_url = malloc(len);
			if (cfg->target.base_url)
				snprintf(cfg->target.base_url, len, "https://%s.tt.omtrdc.net",
					 cfg->target.client_code);
		}
	}
	if (cfg->target.base_url) {
		size_t n = strlen(cfg->target.base_url);
		while (n && cfg->target.base_url[n - 1] == '/')
			cfg->target.base_url[--n] = '\0';
		if (strncmp(cfg->target.base_url, "https://", 8) != 0 &&
		    strncmp(cfg->target.base_url, "http://", 7) != 0)
			report(l, mark, "target.base_url must start with https:// (or http:// for tests)");
	}
	if (cfg->target.oauth.is_set) {
		if (cfg->target.token_file)
			report(l, mark, "target.oauth and target.token_file: choose one (oauth makes and renews the token)");
		if (cfg->target.oauth.ims_url && strncmp(cfg->target.oauth.ims_url, "https://", 8) != 0)
			report(l, mark, "target.oauth.ims_url must start with https:// (the client secret goes there)");
		if (cfg->target.oauth.admin_url && strncmp(cfg->target.oauth.admin_url, "https://", 8) != 0)
			report(l, mark, "target.oauth.admin_url must start with https://");
		if (cfg->target.oauth.tenant && (!*cfg->target.oauth.tenant || strpbrk(cfg->target.oauth.tenant, "/?#%")))
			report(l, mark, "target.oauth.tenant \"%s\" must be a plain name", cfg->target.oauth.tenant);
		if (cfg->target.oauth.admin_url) {
			size_t n = strlen(cfg->target.oauth.admin_url);
			while (n && cfg->target.oauth.admin_url[n - 1] == '/')
				cfg->target.oauth.admin_url[--n] = '\0';
		}
	}
	if (cfg->retry.initial_ms > cfg->retry.max_ms)
		report(l, mark, "retry.initial must not be longer than retry.max");
	if (cfg->target.poll_interval_ms > cfg->target.poll_max_ms)
		report(l, mark, "target.poll_interval must not be longer than target.poll_max");
	/* 0 (the default): a fifth of the budget, so submissions never starve. */
	if (cfg->limits.poll_calls_per_minute == 0)
		cfg->limits.poll_calls_per_minute = cfg->limits.calls_per_minute >= 5 ? cfg->limits.calls_per_minute / 5 : 1;
	else if (cfg->limits.poll_calls_per_minute >= cfg->limits.calls_per_minute && cfg->limits.calls_per_minute > 1)
		report(l, mark, "limits.poll_calls_per_minute (%lld) must leave room for submissions in "
				"limits.calls_per_minute (%lld)", (long long)cfg->limits.poll_calls_per_minute,
		       (long long)cfg->limits.calls_per_minute);
	if (cfg->batch.rows == ROWS_CHANGED_ONLY && cfg->target.api_version == 2)
		warn(l, mark, "batch.rows changed_only with api_version 2: consecutive v2 batches for one profile "
			      "override each other, so a row with only the changed attributes can undo an earlier "
			      "batch's values unless a page visit came in between; use full_profile");
	if (cfg->target.id_type == ID_PC && cfg->target.api_version == 2)
		warn(l, mark, "id_type pcId with api_version 2: with ECID-based implementations pcId "
			      "must not be the key of a v2 batch; use api_version 1 for pcId keys");
	char addr[64];
	int port;
	if (cfg->metrics.listen && listen_addr_parse(cfg->metrics.listen, addr, sizeof(addr), &port) < 0)
		report(l, mark, "metrics.listen \"%s\" must be ADDR:PORT with a numeric address "
				"(127.0.0.1:9641, [::1]:9641, or :9641 for every address)", cfg->metrics.listen);
	if (cfg->n_sources == 0)
		warn(l, mark, "no sources configured; the daemon will only deliver what is already queued");
}

int config_load_buffer(const char *name, const char *text, size_t len, struct config **out, FILE *err)
{
	struct loader l = { .path = name, .err = err };
	yaml_parser_t parser;
	int r = 0;

	struct config *cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return -ENOMEM;
	cfg->path = strdup(name);
	if (!cfg->path) {
		r = -ENOMEM;
		goto free_config;
	}
	if (!yaml_parser_initialize(&parser)) {
		r = -ENOMEM;
		goto free_config;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &l.doc)) {
		report(&l, &parser.problem_mark, "YAML syntax error: %s%s%s", parser.problem ? parser.problem : "",
		       parser.context ? " " : "", parser.context ? parser.context : "");
		r = -EINVAL;
		goto delete_parser;
	}
	yaml_node_t *root = yaml_document_get_root_node(&l.doc);
	r = load_root(&l, cfg, root);
	if (r == 0)
		validate(&l, cfg, root);
	if (r == 0 && l.errors)
		r = -EINVAL;
	yaml_document_delete(&l.doc);
delete_parser:
	yaml_parser_delete(&parser);
	if (r == 0) {
		*out = cfg;
		return 0;
	}
free_config:
	config_destroy(cfg);
	if (r == -ENOMEM && err)
		fprintf(err, "%s:1:1: out of memory\n", name);
	return r;
}

int config_load(const char *path, struct config **out, FILE *err)
{
	/* A configuration file is small; anything over 1 MiB is a mistake. */
	enum { MAX_CONFIG = 1 << 20 };
	FILE *f = fopen(path, "rb");
	if (!f) {
		int r = -errno;
		if (err)
			fprintf(err, "%s:1:1: cannot open: %s\n", path, strerror(-r));
		return r;
	}
	char *text = malloc(MAX_CONFIG + 1);
	size_t len = text ? fread(text, 1, MAX_CONFIG + 1, f) : 0;
	int r = 0;
	if (!text)
		r = -ENOMEM;
	else if (ferror(f))
		r = -EIO;
	else if (len > MAX_CONFIG)
		r = -EFBIG;
	fclose(f);
	if (r < 0) {
		if (err)
			fprintf(err, "%s:1:1: cannot read: %s\n", path, strerror(-r));
		free(text);
		return r;
	}
	r = config_load_buffer(path, text, len, out, err);
	free(text);
	return r;
}

static void free_source(struct source_config *s)
{
	free(s->name);
	free(s->path);
	free(s->id_column);
	for (size_t i = 0; i < s->n_columns; i++) {
		free(s->columns[i].from);
		free(s->columns[i].to);
	}
	free(s->columns);
	for (size_t i = 0; i < s->n_exclude; i++)
		free(s->exclude[i]);
	free(s->exclude);
	free(s->query);
	free(s->cursor_column);
	free(s->dsn);
	free(s->password_file);
	free(s->listen);
}

void config_destroy(struct config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->n_sources; i++)
		free_source(&cfg->sources[i]);
	free(cfg->sources);
	free(cfg->path);
	free(cfg->target.client_code);
	free(cfg->target.base_url);
	free(cfg->target.token_file);
	free(cfg->target.oauth.client_id);
	free(cfg->target.oauth.client_secret_file);
	free(cfg->target.oauth.tenant);
	free(cfg->target.oauth.ims_url);
	free(cfg->target.oauth.admin_url);
	free(cfg->target.oauth.scope);
	free(cfg->target.ca_file);
	free(cfg->state.database);
	free(cfg->control.socket);
	free(cfg->control.group);
	free(cfg->verify.canary_id);
	free(cfg->metrics.listen);
	free(cfg);
}

const char *config_column_attr(const struct source_config *src, const char *col)
{
	for (size_t e = 0; e < src->n_exclude; e++)
		if (strcmp(src->exclude[e], col) == 0)
			return NULL;
	for (size_t m = 0; m < src->n_columns; m++)
		if (strcmp(src->columns[m].from, col) == 0)
			return src->columns[m].to;
	return col;
}

const struct source_config *config_find_source(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_sources; i++)
		if (strcmp(cfg->sources[i].name, name) == 0)
			return &cfg->sources[i];
	return NULL;
}
