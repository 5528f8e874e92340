/* SPDX-License-Identifier: MIT */
/* tpsyncd's command line: options, --check-config, --version, then daemon_run. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "daemon.h"
#include "log.h"
#include "units.h"

static void usage(FILE *out)
{
	fputs("Usage: tpsyncd -c FILE [options]\n"
	      "Keeps Adobe Target visitor profiles in sync with CRM exports and databases.\n\n"
	      "  -c, --config FILE     configuration file (YAML)\n"
	      "      --check-config    validate the configuration and exit (0 valid, 1 invalid)\n"
	      "      --once            scan sources, deliver everything, wait for final status, exit\n"
	      "      --wait DURATION   with --once: how long to wait for final status (default 10m)\n"
	      "      --dry-run DIR     with --once: write the batch files that would be sent into DIR;\n"
	      "                        the state database and source files are left untouched\n"
	      "      --fresh-state     move a damaged state database aside and start with a new one\n"
	      "                        (sources are read again and everything is sent once more)\n"
	      "      --log-level LVL   error, warn, info (default) or debug\n"
	      "  -V, --version         print the version\n"
	      "  -h, --help            this help\n",
	      out);
}

int main(int argc, char **argv)
{
	enum { OPT_CHECK = 256, OPT_ONCE, OPT_WAIT, OPT_DRY_RUN, OPT_LOG_LEVEL, OPT_FRESH };
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, OPT_CHECK },
		{ "once", no_argument, NULL, OPT_ONCE },
		{ "wait", required_argument, NULL, OPT_WAIT },
		{ "dry-run", required_argument, NULL, OPT_DRY_RUN },
		{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
		{ "fresh-state", no_argument, NULL, OPT_FRESH },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = NULL;
	bool check_only = false;
	struct daemon_options opts = { .wait_ms = 600000 };
	struct config *cfg = NULL;
	int opt;

	log_init();
	while ((opt = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case OPT_CHECK:
			check_only = true;
			break;
		case OPT_ONCE:
			opts.is_once = true;
			break;
		case OPT_WAIT:
			if (units_parse_duration(optarg, &opts.wait_ms) < 0) {
				fprintf(stderr, "tpsyncd: --wait: expected a duration like 30s or 10m, got \"%s\"\n", optarg);
				return 64;
			}
			break;
		case OPT_DRY_RUN:
			opts.dry_run_dir = optarg;
			break;
		case OPT_FRESH:
			opts.is_fresh_state = true;
			break;
		case OPT_LOG_LEVEL: {
			enum log_level level;
			if (log_parse_level(optarg, &level) < 0) {
				fprintf(stderr, "tpsyncd: --log-level: expected error, warn, info or debug\n");
				return 64;
			}
			log_set_level(level);
			break;
		}
		case 'V':
			printf("tpsyncd %s\n", TPSYNC_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 64;
		}
	}
	if (!config_path || optind != argc) {
		usage(stderr);
		return 64;
	}
	if (opts.dry_run_dir && !opts.is_once) {
		fprintf(stderr, "tpsyncd: --dry-run goes with --once\n");
		return 64;
	}
	if (config_load(config_path, &cfg, stderr) < 0)
		return 1;
	if (check_only) {
		printf("%s: configuration is valid (%zu source%s)\n", config_path, cfg->n_sources,
		       cfg->n_sources == 1 ? "" : "s");
		config_destroy(cfg);
		return 0;
	}
	return daemon_run(cfg, &opts);
}
