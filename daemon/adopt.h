#pragma once

/*
 * Crash restart: take over the channels a killed run left, where the config
 * still describes them exactly as they were made, so that attached clients
 * keep working and new ones land on the same objects (same ids, same
 * contents, no message lost). A channel is taken over only when its
 * channel record, its segment's and its set's records all agree, both
 * objects are proven the killed run's (reclaim.h's rules), its key is the
 * one the config gives it (fixed, or one of the name's derived candidates
 * under the current secret), its config digest is unchanged, and a ring's
 * header is intact. Everything else is left to reclaim, which removes it;
 * the channel is then made anew, as a reload replaces a changed channel.
 * A ring's holder table is taken over too: the killed run's live holders
 * keep their tokens until they take them back or are found gone
 * (registry_adopt()).
 */

#include <stddef.h>

#include "daemon/config.h"
#include "daemon/registry.h"
#include "daemon/state.h"

/*
 * Adopt what v records into reg, marking the records of every adopted
 * channel (.adopted) so reclaim leaves them. Returns how many channels were
 * adopted; logs each one, and why a recorded channel was not.
 */
size_t adopt_channels(Registry *reg, const Config *cfg, const uint8_t *secret, StateRecord *v, size_t n);
