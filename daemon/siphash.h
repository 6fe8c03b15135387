#pragma once

/*
 * SipHash-2-4 (Aumasson and Bernstein, 2012): a keyed pseudo-random
 * function over short inputs. Used to derive System V keys from channel
 * names with a secret only the daemon can read, so another user cannot
 * compute the candidates in advance and squat them.
 */

#include <stddef.h>
#include <stdint.h>

#define SIPHASH_KEY_SIZE 16

/* The 64-bit SipHash-2-4 of data[0..len) under the 16-byte key. Pure; thread-safe. */
uint64_t siphash24(const uint8_t key[SIPHASH_KEY_SIZE], const void *data, size_t len);
