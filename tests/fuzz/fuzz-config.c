/*
 * Fuzz target: the config loader over arbitrary text (user and group names
 * are resolved, so it runs the real NSS lookups too).
 */

#include <stdint.h>

#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char msg[1024];
        Config *c = NULL;

        if (config_parse((const char *) data, size, "fuzz.json", &c, msg, sizeof msg) == 0)
                config_free(c);
        return 0;
}
