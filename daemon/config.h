#pragma once

/*
 * The daemon's configuration: the JSON file of SPEC.md, loaded, validated
 * and resolved (user and group names to ids) in one step, so that nothing
 * after loading can fail for a reason the config could have shown.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/proto.h"

#define CONFIG_DEFAULT_PATH "/etc/shmbroker/shmbroker.json"
#define CONFIG_DEFAULT_SOCKET "/run/shmbroker/shmbroker.sock"
#define CONFIG_DEFAULT_MODE 0660
#define CONFIG_FILE_MAX (16u * 1024 * 1024)
#define CONFIG_NSEMS_MAX 32000          /* the largest SEMMSL Linux allows */
#define CONFIG_SEMVMX 32767
#define CONFIG_DEFAULT_SUBSCRIBERS 16   /* a broadcast channel's, when "subscribers" is not given */

typedef struct ChannelSpec {
        char name[PROTO_NAME_MAX + 1];
        ProtoKind kind;                 /* sysv (shmget, semget) or posix (files in /dev/shm) */
        ProtoLayout layout;
        uint64_t size;                  /* segment bytes; for a ring or broadcast, computed */
        uint32_t slot_size, slots;      /* ring and broadcast only */
        uint32_t subscribers;           /* broadcast only: the most at once */
        ProtoOverflow overflow;         /* broadcast only */
        unsigned nsems;                 /* whole set, ring's reserved ones included */
        unsigned short *sem_values;     /* nsems initial values */
        uid_t uid;
        gid_t gid;
        mode_t mode;
        bool owner_set;                 /* "owner" was given */
        bool has_key;
        uint32_t key;                   /* fixed key, when has_key */
        /* Where a key from "ftok" came from, for messages: the config's own (NULL in a channel's copy, or none). */
        char *ftok_path;
        int ftok_proj;
} ChannelSpec;

/* Limits on what clients can make the daemon hold ("limits" in the config). */
typedef struct ConfigLimits {
        uint32_t request_max;           /* bytes in a request line, newline included */
        uint32_t connections_max;       /* open connections, all users */
        uint32_t connections_per_uid;   /* open connections of one uid */
        uint32_t request_timeout_ms;    /* to finish a half-sent request line */
        uint32_t output_max;            /* answer bytes queued for a client that does not read */
        uint32_t buffers_per_uid;       /* bytes of all of one uid's connection buffers, in and out */
} ConfigLimits;

#define CONFIG_LIMITS_DEFAULT ((ConfigLimits) {         \
        .request_max = PROTO_LINE_MAX,                  \
        .connections_max = 4096,                        \
        .connections_per_uid = 1024,                    \
        .request_timeout_ms = 10000,                    \
        .output_max = 256 * 1024,                       \
        .buffers_per_uid = 16 * 1024 * 1024,            \
})

typedef struct Config {
        char *source;                   /* file name, for messages */
        char *socket;
        mode_t socket_mode;             /* when the daemon binds the socket itself */
        bool has_socket_group;
        gid_t socket_group;
        ConfigLimits limits;
        char *admin_group;              /* NULL when not set */
        gid_t admin_gid;
        ChannelSpec *channels;          /* in file order */
        size_t n_channels;
        ChannelSpec **by_name;          /* the channels sorted by name */
        uint32_t *fixed_keys;           /* the channels' "key"s, sorted: derived keys skip them */
        size_t n_fixed_keys;
} Config;

/*
 * Load and validate the config at `path`. On success *ret owns a new Config
 * (free with config_free()). On a bad config returns EINVAL (positive) with
 * a sentence naming the file, line and column or the channel and key in msg;
 * ENOENT/EACCES/EFBIG (positive) when the file cannot be read, likewise.
 * -ENOMEM on allocation failure. Thread-safe apart from NSS lookups.
 */
int config_load(const char *path, Config **ret, char *msg, size_t msg_size);

/* As config_load(), from text in memory; `source` names it in messages. */
int config_parse(const char *text, size_t len, const char *source, Config **ret,
                 char *msg, size_t msg_size);

/* Takes NULL; returns NULL. */
Config *config_free(Config *c);

/* Index of the channel named `name`, or -ENOENT. */
int config_find_channel(const Config *c, const char *name);

/* Whether some channel of c fixes System V key `key` ("key"): one that derived keys skip. */
bool config_key_is_fixed(const Config *c, uint32_t key);

/*
 * How s's key is named in a message: "key 0x0c00c039", and for a key from
 * "ftok", " (ftok(\"PATH\", PROJ))" after it, which is what the admin wrote.
 * Returns buf.
 */
const char *config_key_name(const ChannelSpec *s, uint32_t key, char *buf, size_t size);

/* The sentence for s's fixed key held by someone else: which key, from where, and what to do about it. */
void config_key_held(const ChannelSpec *s, char *msg, size_t msg_size);
