/* canopy/arena.h: per-event memory arena (nginx-style pool).
 *
 * Expression evaluation and attribute flow take every byte they return from
 * an arena: the worker creates one arena per thread, resets it after each
 * event, and frees nothing else. An arena has a cap; an allocation beyond it
 * fails (NULL), which evaluation reports as CANOPY_ERR_LIMIT.
 */
#ifndef CANOPY_ARENA_H
#define CANOPY_ARENA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_arena canopy_arena;

#define CANOPY_ARENA_DEFAULT_CAP (64u * 1024u * 1024u)

/* New arena. `chunk` is the size of each block taken from malloc (0: 16 KiB),
 * `cap` the total bytes it may hold (0: CANOPY_ARENA_DEFAULT_CAP).
 * Returns NULL on out of memory. Free with canopy_arena_free(). */
canopy_arena *canopy_arena_new(size_t chunk, size_t cap);

/* Destroy the arena and everything allocated from it. NULL allowed. */
void canopy_arena_free(canopy_arena *a);

/* Forget every allocation (keeps the first block for reuse). Every pointer
 * taken from the arena becomes invalid. */
void canopy_arena_reset(canopy_arena *a);

/* `n` bytes aligned for any type, owned by the arena; NULL when the cap
 * would be exceeded or malloc fails. */
void *canopy_arena_alloc(canopy_arena *a, size_t n);

/* Copy of `n` bytes of `s` plus a NUL terminator, owned by the arena. */
char *canopy_arena_strndup(canopy_arena *a, const char *s, size_t n);

/* Bytes currently handed out (for statistics and tests). */
size_t canopy_arena_used(const canopy_arena *a);

#ifdef __cplusplus
}
#endif
#endif
