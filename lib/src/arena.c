/* arena.c: per-event memory pool (see canopy/arena.h).
 *
 * Blocks are chained; reset keeps the first block so that a steady-state
 * worker allocates nothing from malloc per event. Oversized requests get a
 * block of their own.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/arena.h"

#define ARENA_ALIGN 16u

typedef struct block {
        struct block *next;
        size_t size; /* usable bytes after the header */
        size_t used;
} block;

struct canopy_arena {
        block *head;   /* current block (most recent) */
        block *first;  /* kept across resets */
        size_t chunk;
        size_t cap;
        size_t total;  /* bytes of all blocks' payload */
        size_t handed; /* bytes handed out since the last reset */
};

static size_t hdr_size(void)
{
        return (sizeof(block) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

static block *block_new(size_t size)
{
        block *b = malloc(hdr_size() + size);
        if (!b)
                return NULL;
        b->next = NULL;
        b->size = size;
        b->used = 0;
        return b;
}

canopy_arena *canopy_arena_new(size_t chunk, size_t cap)
{
        canopy_arena *a = calloc(1, sizeof(*a));
        if (!a)
                return NULL;
        a->chunk = chunk ? chunk : 16384u;
        a->cap = cap ? cap : CANOPY_ARENA_DEFAULT_CAP;
        a->first = block_new(a->chunk);
        if (!a->first) {
                free(a);
                return NULL;
        }
        a->head = a->first;
        a->total = a->chunk;
        return a;
}

void canopy_arena_free(canopy_arena *a)
{
        if (!a)
                return;
        block *b = a->head;
        while (b) {
                block *n = b->next;
                free(b);
                b = n;
        }
        free(a);
}

void canopy_arena_reset(canopy_arena *a)
{
        if (!a)
                return;
        block *b = a->head;
        while (b && b != a->first) {
                block *n = b->next;
                free(b);
                b = n;
        }
        a->head = a->first;
        a->first->used = 0;
        a->first->next = NULL;
        a->total = a->first->size;
        a->handed = 0;
}

void *canopy_arena_alloc(canopy_arena *a, size_t n)
{
        if (!a)
                return NULL;
        if (n == 0)
                n = 1;
        if (n > a->cap)
                return NULL;
        size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        if (a->handed + need > a->cap)
                return NULL;
        block *b = a->head;
        if (b->size - b->used < need) {
                size_t size = need > a->chunk ? need : a->chunk;
                if (a->total + size > a->cap + a->chunk)
                        return NULL;
                block *nb = block_new(size);
                if (!nb)
                        return NULL;
                nb->next = a->head;
                a->head = nb;
                a->total += size;
                b = nb;
        }
        void *p = (char *)b + hdr_size() + b->used;
        b->used += need;
        a->handed += need;
        return p;
}

char *canopy_arena_strndup(canopy_arena *a, const char *s, size_t n)
{
        char *p = canopy_arena_alloc(a, n + 1);
        if (!p)
                return NULL;
        if (n)
                memcpy(p, s, n);
        p[n] = '\0';
        return p;
}

size_t canopy_arena_used(const canopy_arena *a)
{
        return a ? a->handed : 0;
}
