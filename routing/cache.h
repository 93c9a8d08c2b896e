/*
 * cache: a bounded map from byte-string keys to opaque values, one per
 * worker (no locks), evicting with CLOCK (second chance), the usual
 * approximation of least-recently-used: inserting into a full cache evicts
 * an item not used since the clock hand last passed it, and its value goes
 * to the free function given at creation.  It knows nothing of freshness:
 * route.c stores records that carry their own fetch time and invalidation
 * stamps.
 *
 * Cost of a get: one keyed hash of the key (SipHash-1-3, so that crafted
 * Host headers cannot pile up in one probe run), one probe run in a flat
 * array of 16-byte slots {hash bits, clock position, pointer} (usually one
 * cache line), and the key comparison.  A cache made with cache_new_keyed() keeps no key of its
 * own: the key is read from the value, which the caller reads next anyway,
 * so a hit touches two cache lines.  A hit sets one bit in a bitmap instead
 * of relinking a list, and writes to no cold cache line.  The slot array is
 * allocated once for the capacity (large arrays are mmap'ed with
 * MADV_HUGEPAGE and their pages touched as the cache fills): the memory of
 * the cache itself is bounded by its capacity.
 */
#ifndef TG_CACHE_H
#define TG_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct cache;
typedef void (*cache_free_fn)(void *val);
/* The key stored in val itself (cache_new_keyed): its bytes and length. */
typedef const char *(*cache_key_fn)(const void *val, size_t *klen);

/* capacity: 1 .. 2^30 items; free_fn may be NULL.  The cache copies keys.  NULL on OOM. */
struct cache *cache_new(size_t capacity, cache_free_fn free_fn);
/*
 * Same, for values that hold their own key: key_fn(val) must return, for
 * as long as val is in the cache, the key val was stored under.  val must
 * not be NULL.  The first 128 bytes of a value are prefetched before its key
 * is read: a hit then waits for memory once for what the caller reads next.
 */
struct cache *cache_new_keyed(size_t capacity, cache_free_fn free_fn, cache_key_fn key_fn);
/* Frees every value (free_fn) and the cache. */
void cache_free(struct cache *c);

/* The value for key (klen bytes) or NULL; marks it used. */
void *cache_get(struct cache *c, const char *key, size_t klen);
/* Same with the key's cache_hash() already computed (the caller hashes once for several lookups). */
void *cache_get_h(struct cache *c, const char *key, size_t klen, uint64_t hash);
/* Same as cache_get without marking the item used. */
void *cache_peek(const struct cache *c, const char *key, size_t klen);

/*
 * Stores val under key, replacing (and freeing) an older value (a
 * replacement counts as a use), evicting an item when full.  A new item
 * takes the evicted one's place just behind the clock hand: it has a whole
 * turn of the hand to be used before it can be evicted.  Returns 0, or -1
 * on OOM (val is then not stored and still the caller's).
 */
int cache_put(struct cache *c, const char *key, size_t klen, void *val);

/* Removes key (its value freed); 1 when it was there. */
int cache_del(struct cache *c, const char *key, size_t klen);

size_t cache_count(const struct cache *c);
size_t cache_capacity(const struct cache *c);
uint64_t cache_evictions(const struct cache *c);
/* Bytes of the cache's own tables at full capacity (not the values, nor copied keys). */
size_t cache_footprint(const struct cache *c);

/*
 * Keyed hash (SipHash-1-3 with a per-process random key); exposed so that
 * callers hash keys the same way.  Stable for the life of the process only.
 */
uint64_t cache_hash(const char *key, size_t klen);

#endif
