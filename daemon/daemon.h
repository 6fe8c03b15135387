#pragma once

/*
 * The daemon as a whole: load the config, lock the state, take over or
 * reclaim what a killed run left, create every channel (or none), listen,
 * report ready, serve on sd-event until SIGTERM/SIGINT, then remove
 * everything it made. While a ring taken over still has holders of the
 * killed run, a timer judges them once a second; holders whose connection
 * closed while their process lives on are ended when it exits (exit
 * watches, on the same loop).
 */

typedef struct DaemonOptions {
        const char *config_path;
        const char *socket_path;        /* overrides the config's; may be NULL */
        const char *state_dir;          /* lock, state and key secret; NULL: see state_dir_setup() */
        int log_level;
} DaemonOptions;

/* Run to completion. Returns the process exit status (0 after a clean stop). */
int daemon_run(const DaemonOptions *o);

/* Validate the config only, touching no IPC. Returns the exit status. */
int daemon_check_config(const DaemonOptions *o);
