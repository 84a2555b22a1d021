/* Shared conventions for every C module of maglev._native.
 *
 * - Functions return a count (>= 0) or -errno; maglev/native.py turns a negative
 *   return into an exception through one message table.
 * - Tunables live in mg_consts.h, each with a comment.
 * - Only C11 __atomic builtins are used for cross-process memory ordering.
 */
#ifndef MG_COMMON_H
#define MG_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MG_LIKELY(x) __builtin_expect(!!(x), 1)
#define MG_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MG_CACHE_LINE 64

#endif
