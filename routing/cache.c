/*
 * cache: open addressing (linear probing, backward-shift deletion, so no
 * tombstones) over a power-of-two array of 16-byte slots {32 bits of the
 * hash, clock position, pointer}, at least 1.5 slots per item (load <= 2/3).
 * A probe compares hash bits in the slots and reads a key only when they
 * match.  The pointer is the value itself (cache_new_keyed: the key is read
 * from it) or a node holding the value and a copy of the key (cache_new).
 *
 * CLOCK runs over "positions" 0..capacity-1, a ring apart from the slots:
 * each item holds one position (ring[pos] names its slot), a hit sets the
 * position's bit in a bitmap, and the hand clears set bits as it passes
 * (64 at a time) and evicts the item at the first clear bit.  The new item
 * takes the evicted position, just behind the hand, so it has a whole turn
 * of the hand to be used before it can be evicted.
 */
#include "routing/cache.h"

#include <endian.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define CACHE_HUGE ((size_t)2 << 20)   /* tables from this size are mmap'ed, hugepage-advised */

struct cache_slot {
    uint32_t hash;                  /* low 32 bits of the hash (the home slot's bits included) */
    uint32_t pos;                   /* clock position */
    void *p;                        /* the value (keyed) or a struct cache_node; NULL = empty */
};

/* A value with its copied key (caches made by cache_new). */
struct cache_node {
    void *val;
    size_t klen;
    char key[];
};

struct cache {
    struct cache_slot *slots;
    size_t mask;                    /* number of slots - 1 */
    uint32_t *ring;                 /* position -> slot; a free position: next free + 1 */
    uint64_t *used;                 /* one bit per position */
    size_t capacity, count, hand;
    size_t fill;                    /* positions handed out at least once */
    uint32_t free_head;             /* free position + 1, 0 = none */
    uint64_t evictions;
    cache_free_fn free_fn;
    cache_key_fn key_fn;            /* NULL: slots point to nodes */
    size_t slots_bytes, ring_bytes, used_bytes;
};

/* ---- hash: SipHash-1-3 (Aumasson and Bernstein), keyed per process ---- */

static uint64_t cache_k0 = 0x0706050403020100ULL, cache_k1 = 0x0f0e0d0c0b0a0908ULL;

/* Picks the hash key once, before main() (and so before any worker thread). */
__attribute__((constructor)) static void cache_seed(void)
{
    uint64_t k[2];
    if (getrandom(k, sizeof(k), GRND_NONBLOCK) != (ssize_t)sizeof(k)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        k[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
        k[1] = (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4fULL ^ (uint64_t)(uintptr_t)&ts;
    }
    cache_k0 = k[0];
    cache_k1 = k[1];
}

static inline uint64_t cache_rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define CACHE_SIPROUND                                                            \
    do {                                                                          \
        v0 += v1; v1 = cache_rotl(v1, 13); v1 ^= v0; v0 = cache_rotl(v0, 32);    \
        v2 += v3; v3 = cache_rotl(v3, 16); v3 ^= v2;                              \
        v0 += v3; v3 = cache_rotl(v3, 21); v3 ^= v0;                              \
        v2 += v1; v1 = cache_rotl(v1, 17); v1 ^= v2; v2 = cache_rotl(v2, 32);    \
    } while (0)

uint64_t cache_hash(const char *key, size_t klen)
{
    uint64_t v0 = cache_k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = cache_k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = cache_k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = cache_k1 ^ 0x7465646279746573ULL;
    const unsigned char *p = (const unsigned char *)key;
    size_t n = klen;
    while (n >= 8) {
        uint64_t m;
        memcpy(&m, p, 8);
        m = le64toh(m);
        v3 ^= m;
        CACHE_SIPROUND;
        v0 ^= m;
        p += 8;
        n -= 8;
    }
    uint64_t b = (uint64_t)klen << 56;
    for (size_t i = 0; i < n; i++)
        b |= (uint64_t)p[i] << (8 * i);
    v3 ^= b;
    CACHE_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    CACHE_SIPROUND;
    CACHE_SIPROUND;
    CACHE_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- tables ---- */

/*
 * Zeroed memory for a table: calloc when small; else an anonymous mapping
 * (zero pages until touched) aligned to 2 MiB and advised for transparent
 * huge pages, so that lookups spread over a large table do not each miss
 * the TLB as well.  *bytes gets the size to pass to cache_table_free().
 */
static void *cache_table_alloc(size_t size, size_t *bytes)
{
    if (size < CACHE_HUGE) {
        *bytes = size;
        return calloc(1, size ? size : 1);
    }
    size = (size + CACHE_HUGE - 1) & ~(CACHE_HUGE - 1);
    size_t len = size + CACHE_HUGE;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)p + CACHE_HUGE - 1) & ~(uintptr_t)(CACHE_HUGE - 1));
    if (a > p)
        munmap(p, (size_t)(a - p));
    if (a + size < p + len)
        munmap(a + size, (size_t)(p + len - (a + size)));
#ifdef MADV_HUGEPAGE
    madvise(a, size, MADV_HUGEPAGE);     /* advice only: fine if THP is off */
#endif
    *bytes = size;
    return a;
}

static void cache_table_free(void *p, size_t bytes)
{
    if (p == NULL)
        return;
    if (bytes < CACHE_HUGE)
        free(p);
    else
        munmap(p, bytes);
}

struct cache *cache_new_keyed(size_t capacity, cache_free_fn free_fn, cache_key_fn key_fn)
{
    if (capacity == 0)
        capacity = 1;
    if (capacity > ((size_t)1 << 30))
        return NULL;
    struct cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    size_t ns = 16;
    while (ns < capacity + capacity / 2)
        ns <<= 1;
    c->mask = ns - 1;
    c->capacity = capacity;
    c->free_fn = free_fn;
    c->key_fn = key_fn;
    c->slots = cache_table_alloc(ns * sizeof(*c->slots), &c->slots_bytes);
    c->ring = cache_table_alloc(capacity * sizeof(*c->ring), &c->ring_bytes);
    c->used = cache_table_alloc((capacity + 63) / 64 * sizeof(*c->used), &c->used_bytes);
    if (c->slots == NULL || c->ring == NULL || c->used == NULL) {
        cache_table_free(c->slots, c->slots_bytes);
        cache_table_free(c->ring, c->ring_bytes);
        cache_table_free(c->used, c->used_bytes);
        free(c);
        return NULL;
    }
    return c;
}

struct cache *cache_new(size_t capacity, cache_free_fn free_fn)
{
    return cache_new_keyed(capacity, free_fn, NULL);
}

static inline void *cache_val(const struct cache *c, const struct cache_slot *sl)
{
    return c->key_fn ? sl->p : ((const struct cache_node *)sl->p)->val;
}

/* Frees what slot sl holds: its value (free_fn) and node. */
static void cache_slot_release(struct cache *c, struct cache_slot *sl)
{
    void *val = cache_val(c, sl);
    if (c->free_fn && val)
        c->free_fn(val);
    if (c->key_fn == NULL)
        free(sl->p);
    sl->p = NULL;
}

void cache_free(struct cache *c)
{
    if (c == NULL)
        return;
    for (size_t s = 0; s <= c->mask; s++)
        if (c->slots[s].p)
            cache_slot_release(c, &c->slots[s]);
    cache_table_free(c->slots, c->slots_bytes);
    cache_table_free(c->ring, c->ring_bytes);
    cache_table_free(c->used, c->used_bytes);
    free(c);
}

static inline int cache_key_eq(const struct cache *c, const struct cache_slot *sl, const char *key, size_t klen)
{
    size_t kl;
    const char *k;
    if (c->key_fn) {
        k = c->key_fn(sl->p, &kl);
    } else {
        const struct cache_node *n = sl->p;
        k = n->key;
        kl = n->klen;
    }
    return kl == klen && memcmp(k, key, klen) == 0;
}

/*
 * The slot holding key, or (*found = 0) the empty slot where it would go.
 * Only slots are read until the hash bits match.
 */
static inline size_t cache_find(const struct cache *c, const char *key, size_t klen, uint64_t h, int *found)
{
    uint32_t h32 = (uint32_t)h;
    for (size_t s = h & c->mask;; s = (s + 1) & c->mask) {
        const struct cache_slot *sl = &c->slots[s];
        if (sl->p == NULL) {
            *found = 0;
            return s;
        }
        if (sl->hash != h32)
            continue;
        if (c->key_fn) {
            /* The key may not be in the value's first line: ask for both at once. */
            __builtin_prefetch(sl->p);
            __builtin_prefetch((const char *)sl->p + 64);
        }
        if (cache_key_eq(c, sl, key, klen)) {
            *found = 1;
            return s;
        }
    }
}

static inline void cache_mark(struct cache *c, uint32_t pos)
{
    uint64_t m = (uint64_t)1 << (pos & 63), *w = &c->used[pos >> 6];
    if (!(*w & m))                       /* no write when already set */
        *w |= m;
}

/* Removes the entry in slot s (value freed; its position not freed), moving later entries of the run back. */
static void cache_remove_slot(struct cache *c, size_t s)
{
    cache_slot_release(c, &c->slots[s]);
    c->count--;
    size_t j = s;
    for (;;) {
        j = (j + 1) & c->mask;
        if (c->slots[j].p == NULL)
            break;
        size_t home = c->slots[j].hash & c->mask;
        if (((j - home) & c->mask) >= ((j - s) & c->mask)) {
            c->slots[s] = c->slots[j];
            c->ring[c->slots[s].pos] = (uint32_t)s;
            s = j;
        }
    }
    c->slots[s].p = NULL;
    c->slots[s].hash = 0;
}

/* CLOCK: the first position from the hand whose bit is clear, clearing the bits passed. */
static uint32_t cache_clock_victim(struct cache *c)
{
    for (;;) {
        size_t i = c->hand, b = i & 63;
        size_t n = 64 - b;
        if (n > c->capacity - i)
            n = c->capacity - i;
        uint64_t valid = (n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << b;
        uint64_t *w = &c->used[i >> 6];
        uint64_t cand = ~*w & valid;
        if (cand) {
            size_t k = (size_t)__builtin_ctzll(cand);
            *w &= ~(valid & (((uint64_t)1 << k) - 1));
            size_t v = (i & ~(size_t)63) + k;
            c->hand = v + 1 == c->capacity ? 0 : v + 1;
            return (uint32_t)v;
        }
        *w &= ~valid;
        c->hand = i + n == c->capacity ? 0 : i + n;
    }
}

void *cache_get_h(struct cache *c, const char *key, size_t klen, uint64_t hash)
{
    int found;
    size_t s = cache_find(c, key, klen, hash, &found);
    if (!found)
        return NULL;
    cache_mark(c, c->slots[s].pos);
    return cache_val(c, &c->slots[s]);
}

void *cache_get(struct cache *c, const char *key, size_t klen)
{
    return cache_get_h(c, key, klen, cache_hash(key, klen));
}

void *cache_peek(const struct cache *c, const char *key, size_t klen)
{
    int found;
    size_t s = cache_find(c, key, klen, cache_hash(key, klen), &found);
    return found ? cache_val(c, &c->slots[s]) : NULL;
}

int cache_put(struct cache *c, const char *key, size_t klen, void *val)
{
    if (c->key_fn && val == NULL)
        return -1;
    uint64_t h = cache_hash(key, klen);
    int found;
    size_t s = cache_find(c, key, klen, h, &found);
    if (found) {
        struct cache_slot *sl = &c->slots[s];
        void *old = cache_val(c, sl);
        if (old != val && c->free_fn && old)
            c->free_fn(old);
        if (c->key_fn)
            sl->p = val;
        else
            ((struct cache_node *)sl->p)->val = val;
        cache_mark(c, sl->pos);
        return 0;
    }
    void *p = val;
    if (c->key_fn == NULL) {
        struct cache_node *n = malloc(sizeof(*n) + klen);
        if (n == NULL)
            return -1;
        n->val = val;
        n->klen = klen;
        memcpy(n->key, key, klen);
        p = n;
    }
    uint32_t pos;
    if (c->free_head) {
        pos = c->free_head - 1;
        c->free_head = c->ring[pos];
    } else if (c->fill < c->capacity) {
        pos = (uint32_t)c->fill++;
    } else {
        pos = cache_clock_victim(c);
        cache_remove_slot(c, c->ring[pos]);
        c->evictions++;
        s = cache_find(c, key, klen, h, &found);   /* entries may have moved back */
    }
    c->slots[s].hash = (uint32_t)h;
    c->slots[s].pos = pos;
    c->slots[s].p = p;
    c->ring[pos] = (uint32_t)s;
    c->used[pos >> 6] &= ~((uint64_t)1 << (pos & 63));
    c->count++;
    return 0;
}

int cache_del(struct cache *c, const char *key, size_t klen)
{
    int found;
    size_t s = cache_find(c, key, klen, cache_hash(key, klen), &found);
    if (!found)
        return 0;
    uint32_t pos = c->slots[s].pos;
    cache_remove_slot(c, s);
    c->used[pos >> 6] &= ~((uint64_t)1 << (pos & 63));
    c->ring[pos] = c->free_head;
    c->free_head = pos + 1;
    return 1;
}

size_t cache_count(const struct cache *c)
{
    return c->count;
}

size_t cache_capacity(const struct cache *c)
{
    return c->capacity;
}

uint64_t cache_evictions(const struct cache *c)
{
    return c->evictions;
}

size_t cache_footprint(const struct cache *c)
{
    return sizeof(*c) + c->slots_bytes + c->ring_bytes + c->used_bytes;
}
