#pragma once

/*
 * Reload: bring the registry in line with a new, already validated config.
 *
 *   added     created, exactly as at start;
 *   removed   objects removed, holds dropped;
 *   kept      untouched: same ids, same bytes, same semaphore values;
 *   changed   owner/group/mode only: applied in place with IPC_SET, unless
 *             they would refuse a current holder what it holds (the kernel
 *             cannot revoke a mapping), then replaced as below;
 *             size, semaphores, layout or key: replaced at once. The old
 *             objects are removed (attached clients keep their mapping until
 *             they detach; operations on the old set fail with EIDRM, which
 *             the library reports as "channel removed"), holds are dropped,
 *             and new objects are made under the channel's key. Clients
 *             reopen the channel to get the new ones.
 *
 * The kernel limits are checked for the whole plan first, and channels are
 * added before anything is removed, so a failure to add rolls back with
 * nothing else touched.
 */

#include "daemon/config.h"
#include "daemon/registry.h"

/*
 * Returns 0 with *ret filled (free with proto_reload_result_done()), a
 * positive errno (ENOSPC, EEXIST, ...) with a sentence in msg when nothing
 * was changed, or -ENOMEM.
 */
int reload_apply(Registry *reg, const Config *cfg, ProtoReloadResult *ret, char *msg, size_t msg_size);

