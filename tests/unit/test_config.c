/* SPDX-License-Identifier: MIT */
/* Config loading: defaults, every contract key, and errors with positions. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "build_config.h"
#include "check.h"
#include "config.h"

static char path[] = "/tmp/tpsync-test-config-XXXXXX";

/* Loads text; returns the result and leaves the error output in errbuf. */
static int load(const char *text, struct config **cfg, char *errbuf, size_t size)
{
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	FILE *err = fmemopen(errbuf, size, "w");
	int r = config_load(path, cfg, err);
	fclose(err);
	return r;
}

static void full(void)
{
	struct config *cfg = NULL;
	char err[4096] = "";
	int r = load("target:\n"
		     "  client_code: demo\n"
		     "  api_version: 1\n"
		     "  id_type: pcId\n"
		     "  timeout: 90s\n"
		     "batch:\n"
		     "  max_rows: 1000\n"
		     "  max_bytes: 5MB\n"
		     "  linger: 250ms\n"
		     "  rows: changed_only\n"
		     "retry:\n  initial: 2s\n  max: 1h\n  give_up_after: 3d\n"
		     "limits:\n  rows_per_day: 5000\n  calls_per_minute: 10\n"
		     "sources:\n"
		     "  - name: crm\n    type: spool\n    path: /x\n    id_column: cid\n"
		     "    columns: {tier: loyaltyTier}\n    exclude: [email, phone]\n"
		     "    after: delete\n    delimiter: \";\"\n    strict: true\n"
		     "  - name: pos\n    type: snapshot\n    path: /y.csv\n    id_column: id\n"
#if HAVE_LIBPQ
		     "  - name: crm-db\n    type: postgres\n    dsn: \"host=db port=5433 dbname=crm user=tp\"\n"
		     "    password_file: /etc/pw\n    listen: changed\n    id_column: id\n    cursor_column: at\n"
		     "    query: SELECT * FROM c WHERE at >= :cursor\n    poll: 2m\n"
#endif
		     ,
		     &cfg, err, sizeof(err));
	CHECK(r == 0);
	if (r != 0) {
		fprintf(stderr, "%s", err);
		return;
	}
	CHECK_STR(cfg->target.base_url, "https://demo.tt.omtrdc.net");
	CHECK(cfg->target.api_version == 1);
	CHECK(cfg->target.id_type == ID_PC);
	CHECK(cfg->target.timeout_ms == 90000);
	CHECK(cfg->batch.max_rows == 1000 && cfg->batch.max_bytes == 5000000);
	CHECK(cfg->batch.linger_ms == 250 && cfg->batch.rows == ROWS_CHANGED_ONLY);
	CHECK(cfg->retry.initial_ms == 2000 && cfg->retry.max_ms == 3600000);
	CHECK(cfg->retry.give_up_after_ms == 3LL * 86400000);
	CHECK(cfg->limits.rows_per_day == 5000 && cfg->limits.calls_per_minute == 10);
#if HAVE_LIBPQ
	CHECK(cfg->n_sources == 3);
	CHECK(cfg->sources[2].type == SOURCE_POSTGRES && cfg->sources[2].path == NULL);
	CHECK_STR(cfg->sources[2].dsn, "host=db port=5433 dbname=crm user=tp");
	CHECK_STR(cfg->sources[2].password_file, "/etc/pw");
	CHECK_STR(cfg->sources[2].listen, "changed");
	CHECK(cfg->sources[2].poll_ms == 120000);
	CHECK_STR(config_source_type_name(cfg->sources[2].type), "postgres");
#else
	CHECK(cfg->n_sources == 2);
#endif
	CHECK_STR(cfg->sources[0].columns[0].from, "tier");
	CHECK_STR(cfg->sources[0].columns[0].to, "loyaltyTier");
	CHECK(cfg->sources[0].n_exclude == 2);
	CHECK_STR(cfg->sources[0].exclude[1], "phone");
	CHECK(cfg->sources[0].after == AFTER_DELETE && cfg->sources[0].delimiter == ';' && cfg->sources[0].strict);
	CHECK(cfg->sources[1].type == SOURCE_SNAPSHOT && cfg->sources[1].delimiter == ',');
	CHECK(config_find_source(cfg, "pos") == &cfg->sources[1]);
	CHECK(strstr(err, "warning: id_type pcId with api_version 2") == NULL); /* v1: no warning */
	config_destroy(cfg);
}

static void defaults(void)
{
	struct config *cfg = NULL;
	char err[4096] = "";
	CHECK(load("target: {client_code: acme, base_url: \"http://127.0.0.1:9/\"}\n", &cfg, err, sizeof(err)) == 0);
	if (!cfg)
		return;
	CHECK_STR(cfg->target.base_url, "http://127.0.0.1:9");
	CHECK(cfg->target.api_version == 2 && cfg->target.id_type == ID_THIRD_PARTY);
	CHECK(cfg->target.timeout_ms == 60000);
	CHECK(cfg->batch.max_rows == 500000 && cfg->batch.max_bytes < 50000000);
	CHECK(cfg->batch.linger_ms == 5000 && cfg->batch.max_in_flight == 2 && cfg->batch.rows == ROWS_FULL_PROFILE);
	CHECK(cfg->retry.initial_ms == 1000 && cfg->retry.max_ms == 600000 && cfg->retry.give_up_after_ms == 7LL * 86400000);
	/* No daily cap by default (Target has none since 2025); polls get a fifth of the budget. */
	CHECK(cfg->limits.rows_per_day == 0 && cfg->limits.calls_per_minute == 50);
	CHECK(cfg->limits.poll_calls_per_minute == 10);
	CHECK(cfg->target.poll_interval_ms == 30000 && cfg->target.poll_max_ms == 600000);
	CHECK(cfg->target.status_ttl_ms == 86400000 && cfg->target.min_upload_speed == 100000);
	CHECK_STR(cfg->state.database, "/var/lib/tpsyncd/state.db");
	CHECK_STR(cfg->control.socket, "/run/tpsyncd/control.sock");
	CHECK(strstr(err, "warning: no sources configured") != NULL);
	config_destroy(cfg);
	/* pcId keys with v2: valid, with a warning. */
	err[0] = '\0';
	CHECK(load("target: {client_code: acme, id_type: pcId}\n", &cfg, err, sizeof(err)) == 0);
	CHECK(strstr(err, "warning: id_type pcId with api_version 2") != NULL);
	config_destroy(cfg);
}

/* Each bad config fails and names the position and the problem. */
static void errors(void)
{
	static const struct {
		const char *text;
		const char *want;
	} cases[] = {
		{ "target: {client_code: demo}\nbatch:\n  max_rows: 600000\n", ":3:13: max_rows: 600000 is out of range (1 to 500000)" },
		{ "target: {client_code: demo}\nbatch:\n  max_bytes: 50MB\n", ":3:14: max_bytes: 50MB is out of range" },
		{ "target: {client_code: demo}\nbatch:\n  linger: 5 seconds\n", ":3:11: linger: expected a duration" },
		{ "target: {client_code: demo}\nbatch:\n  lingr: 5s\n", ":3:3: unknown key \"lingr\" in batch" },
		{ "target: {client_code: demo}\nbach: {}\n", ":2:1: unknown section \"bach\"" },
		{ "target:\n  api_version: 2\n", ":2:3: target: missing required key \"client_code\"" },
		{ "state: {}\n", "missing required section \"target\"" },
		{ "target: {client_code: demo, id_type: ecid}\n", "id_type: \"ecid\" is not one of thirdPartyId, pcId" },
		{ "target: {client_code: demo}\nsources:\n  - {name: Bad Name, type: spool, path: /x, id_column: id}\n",
		  ":3:5: sources[0]: name \"Bad Name\" must match [a-z0-9_-]+" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: spool, path: /x, id_column: id}\n"
		  "  - {name: a, type: spool, path: /y, id_column: id}\n", ":4:5: sources[1]: duplicate source name \"a\"" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: ftp, path: /x, id_column: id}\n",
		  "type: \"ftp\" is not one of spool, snapshot" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: spool, path: /x}\n",
		  "sources[0]: missing required key \"id_column\"" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: spool, path: /x, id_column: id, delimiter: \":\"}\n",
		  "delimiter: must be" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: spool, path: /x, id_column: id, strict: maybe}\n",
		  "strict: expected true or false" },
		{ "target: {client_code: demo\n", "YAML syntax error" },
		{ "target: {client_code: demo}\nretry: {initial: 1h, max: 1m}\n", "retry.initial must not be longer than retry.max" },
		{ "target: {client_code: demo}\ntarget: {client_code: x}\n", ":2:1: duplicate section \"target\"" },
		{ "target: {client_code: demo, base_url: ftp://x}\n", "base_url must start with https://" },
		{ "", "the file is empty" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: spool, id_column: id}\n",
		  ":3:5: sources[0]: missing required key \"path\"" },
#if HAVE_LIBPQ
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: postgres, id_column: id, query: \"x :cursor\", "
		  "cursor_column: c, dsn: \"dbname=x password=pw\"}\n", "dsn must not contain the password" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: postgres, id_column: id, query: \"x :cursor\", "
		  "cursor_column: c, dsn: \"postgres://u:pw@h/db\"}\n", "dsn must not contain the password" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: postgres, id_column: id, query: \"x :cursor\", "
		  "cursor_column: c, dsn: \"host='unterminated\"}\n", "sources[0]: dsn: " },
#else
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: postgres, id_column: id, query: \"x :cursor\", "
		  "cursor_column: c, dsn: \"dbname=x\"}\n", "built without PostgreSQL support" },
#endif
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: postgres, id_column: id, query: \"x :cursor\", "
		  "cursor_column: c}\n", "a postgres source needs dsn" },
		{ "target: {client_code: demo}\nsources:\n  - {name: a, type: spool, path: /x, id_column: id, listen: ch}\n",
		  "dsn, password_file and listen belong to postgres sources" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct config *cfg = NULL;
		char err[4096] = "";
		int r = load(cases[i].text, &cfg, err, sizeof(err));
		CHECK(r == -EINVAL);
		CHECK(cfg == NULL);
		if (!strstr(err, cases[i].want)) {
			fprintf(stderr, "case %zu: want \"%s\" in:\n%s", i, cases[i].want, err);
			CHECK(!"error text");
		}
		CHECK(strncmp(err, path, strlen(path)) == 0); /* FILE: prefix */
	}
	/* Several errors are all reported, not just the first. */
	char err[4096] = "";
	struct config *cfg = NULL;
	CHECK(load("target: {client_code: demo, timeout: 0s, nope: 1}\nbatch: {max_in_flight: 99}\n", &cfg, err,
		   sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "timeout") && strstr(err, "nope") && strstr(err, "max_in_flight"));
	CHECK(config_load("/nonexistent/tpsync.yaml", &cfg, NULL) == -ENOENT);
}

/* Every section at once (the "seen" sets are sized by the tables), and
 * metrics.listen checked as a numeric ADDR:PORT. */
static void every_section(void)
{
	struct config *cfg = NULL;
	char err[4096] = "";
	static const char base[] = "target: {client_code: demo}\nstate: {database: /tmp/x.db}\n"
				   "control: {socket: /tmp/x.sock}\nbatch: {linger: 1s}\nretry: {max: 1m}\n"
				   "limits: {calls_per_minute: 40}\nverify: {min_age: 2h}\ntrace: {events: 5}\n";
	char text[1024];
	snprintf(text, sizeof(text), "%smetrics: {listen: \"[::1]:9641\"}\n", base);
	CHECK(load(text, &cfg, err, sizeof(err)) == 0);
	if (cfg) {
		CHECK_STR(cfg->metrics.listen, "[::1]:9641");
		CHECK(cfg->trace.events == 5 && cfg->verify.min_age_ms == 7200000);
		config_destroy(cfg);
		cfg = NULL;
	}
	static const char *const bad[] = { "9641", "localhost:9641", "127.0.0.1:0", "127.0.0.1:65536", "::1:9641",
					   "127.0.0.1:", "[::1]9641" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), "%smetrics: {listen: \"%s\"}\n", base, bad[i]);
		err[0] = '\0';
		CHECK(load(text, &cfg, err, sizeof(err)) == -EINVAL);
		CHECK(strstr(err, "metrics.listen") != NULL);
		config_destroy(cfg);
		cfg = NULL;
	}
	/* A section with every key commented out is empty, but target is not optional. */
	CHECK(load("target: {client_code: demo}\nmetrics:\nverify: ~\n", &cfg, err, sizeof(err)) == 0);
	config_destroy(cfg);
	cfg = NULL;
	CHECK(load("target:\nmetrics:\n", &cfg, err, sizeof(err)) == -EINVAL && strstr(err, "target: expected a mapping"));
	config_destroy(cfg);
	cfg = NULL;
	/* target.oauth: a mapping inside a section, with its defaults and checks. */
	CHECK(load("target:\n  client_code: demo\n  oauth:\n    client_id: abc\n    tenant: acme\n"
		   "    client_secret_file: /etc/s\n    renew_before: 10m\n", &cfg, err, sizeof(err)) == 0);
	if (cfg) {
		CHECK(cfg->target.oauth.is_set && cfg->target.oauth.renew_before_ms == 600000);
		CHECK_STR(cfg->target.oauth.ims_url, "https://ims-na1.adobelogin.com/ims/token/v3");
		CHECK_STR(cfg->target.oauth.admin_url, "https://mc.adobe.io");
		CHECK_STR(cfg->target.oauth.tenant, "acme");
		config_destroy(cfg);
		cfg = NULL;
	}
	static const struct { const char *yaml, *want; } oauth_bad[] = {
		{ "    client_id: abc\n", "missing required key \"tenant\"" },
		{ "    client_id: abc\n    tenant: acme\n    ims_url: http://ims\n", "ims_url must start with https://" },
		{ "    client_id: abc\n    tenant: a/b\n", "must be a plain name" },
		{ "    client_id: abc\n    tenant: acme\n    colour: red\n", "unknown key \"colour\" in target.oauth" },
	};
	for (size_t i = 0; i < sizeof(oauth_bad) / sizeof(oauth_bad[0]); i++) {
		snprintf(text, sizeof(text), "target:\n  client_code: demo\n  oauth:\n%s", oauth_bad[i].yaml);
		err[0] = '\0';
		CHECK(load(text, &cfg, err, sizeof(err)) == -EINVAL);
		CHECK(strstr(err, oauth_bad[i].want) != NULL);
		if (!strstr(err, oauth_bad[i].want))
			fprintf(stderr, "%s", err);
		config_destroy(cfg);
		cfg = NULL;
	}
	CHECK(load("target:\n  client_code: demo\n  token_file: /t\n  oauth: {client_id: a, tenant: b}\n", &cfg, err,
		   sizeof(err)) == -EINVAL && strstr(err, "choose one"));
	config_destroy(cfg);
	cfg = NULL;
	snprintf(text, sizeof(text), "%smetrics: {listen: \":9641\"}\nmetrics: {listen: \":1\"}\n", base);
	CHECK(load(text, &cfg, err, sizeof(err)) == -EINVAL && strstr(err, "duplicate section \"metrics\""));
	config_destroy(cfg);
}

int main(void)
{
	int fd = mkstemp(path);
	if (fd < 0)
		return 1;
	full();
	defaults();
	errors();
	every_section();
	unlink(path);
	return check_result("test_config");
}
