/*
 * cache: a bounded LRU map from byte-string keys to opaque values, one per
 * worker (no locks).  It knows nothing of freshness: route.c stores records
 * that carry their own fetch time and invalidation stamps.  Inserting into a
 * full cache evicts the least recently used item, whose value goes to the
 * free function given at creation.
 *
 * Cost: one hash of the key and one chain walk per get; a get moves the item
 * to the front of the LRU list (pointer swaps, no allocation).
 */
#ifndef TG_CACHE_H
#define TG_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct cache;
typedef void (*cache_free_fn)(void *val);

/* capacity >= 1 items; free_fn may be NULL.  NULL on OOM. */
struct cache *cache_new(size_t capacity, cache_free_fn free_fn);
/* Frees every value (free_fn) and the cache. */
void cache_free(struct cache *c);

/* The value for key (klen bytes) or NULL; marks it most recently used. */
void *cache_get(struct cache *c, const char *key, size_t klen);
/* Same without touching the LRU order. */
void *cache_peek(const struct cache *c, const char *key, size_t klen);

/*
 * Stores val under key, replacing (and freeing) an older value, evicting the
 * least recently used item when full.  Returns 0, or -1 on OOM (val is then
 * not stored and still the caller's).
 */
int cache_put(struct cache *c, const char *key, size_t klen, void *val);

/* Removes key (its value freed); 1 when it was there. */
int cache_del(struct cache *c, const char *key, size_t klen);

size_t cache_count(const struct cache *c);
size_t cache_capacity(const struct cache *c);
uint64_t cache_evictions(const struct cache *c);

/* FNV-1a; exposed so that callers hash keys the same way. */
uint64_t cache_hash(const char *key, size_t klen);

#endif
