/*
 * cache: chained hash table (power-of-two buckets, about one per item) plus
 * an intrusive doubly linked LRU list.  Each item is one allocation holding
 * its key inline.
 */
#include "routing/cache.h"

#include <stdlib.h>
#include <string.h>

struct cache_item {
    struct cache_item *hnext;          /* hash chain */
    struct cache_item *prev, *next;    /* LRU list: head = most recent */
    uint64_t hash;
    void *val;
    size_t klen;
    char key[];
};

struct cache {
    struct cache_item **buckets;
    size_t mask;
    size_t count, capacity;
    uint64_t evictions;
    struct cache_item *head, *tail;
    cache_free_fn free_fn;
};

uint64_t cache_hash(const char *key, size_t klen)
{
    uint64_t x = 1469598103934665603ULL;
    for (size_t i = 0; i < klen; i++) {
        x ^= (unsigned char)key[i];
        x *= 1099511628211ULL;
    }
    return x;
}

struct cache *cache_new(size_t capacity, cache_free_fn free_fn)
{
    if (capacity == 0)
        capacity = 1;
    struct cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    size_t nb = 16;
    while (nb < capacity && nb < ((size_t)1 << 26))
        nb <<= 1;
    c->buckets = calloc(nb, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    c->mask = nb - 1;
    c->capacity = capacity;
    c->free_fn = free_fn;
    return c;
}

static void cache_lru_unlink(struct cache *c, struct cache_item *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else
        c->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        c->tail = it->prev;
    it->prev = it->next = NULL;
}

static void cache_lru_push_front(struct cache *c, struct cache_item *it)
{
    it->prev = NULL;
    it->next = c->head;
    if (c->head)
        c->head->prev = it;
    c->head = it;
    if (c->tail == NULL)
        c->tail = it;
}

static struct cache_item **cache_slot(const struct cache *c, const char *key, size_t klen, uint64_t h)
{
    struct cache_item **pp = &c->buckets[h & c->mask];
    while (*pp) {
        struct cache_item *it = *pp;
        if (it->hash == h && it->klen == klen && memcmp(it->key, key, klen) == 0)
            return pp;
        pp = &it->hnext;
    }
    return pp;
}

/* Unlinks and frees an item (value included). */
static void cache_remove(struct cache *c, struct cache_item **pp)
{
    struct cache_item *it = *pp;
    *pp = it->hnext;
    cache_lru_unlink(c, it);
    c->count--;
    if (c->free_fn && it->val)
        c->free_fn(it->val);
    free(it);
}

void cache_free(struct cache *c)
{
    if (c == NULL)
        return;
    struct cache_item *it = c->head;
    while (it) {
        struct cache_item *next = it->next;
        if (c->free_fn && it->val)
            c->free_fn(it->val);
        free(it);
        it = next;
    }
    free(c->buckets);
    free(c);
}

void *cache_get(struct cache *c, const char *key, size_t klen)
{
    struct cache_item *it = *cache_slot(c, key, klen, cache_hash(key, klen));
    if (it == NULL)
        return NULL;
    if (c->head != it) {
        cache_lru_unlink(c, it);
        cache_lru_push_front(c, it);
    }
    return it->val;
}

void *cache_peek(const struct cache *c, const char *key, size_t klen)
{
    struct cache_item *it = *cache_slot(c, key, klen, cache_hash(key, klen));
    return it ? it->val : NULL;
}

int cache_put(struct cache *c, const char *key, size_t klen, void *val)
{
    uint64_t h = cache_hash(key, klen);
    struct cache_item **pp = cache_slot(c, key, klen, h);
    if (*pp) {
        struct cache_item *it = *pp;
        if (it->val != val && c->free_fn && it->val)
            c->free_fn(it->val);
        it->val = val;
        if (c->head != it) {
            cache_lru_unlink(c, it);
            cache_lru_push_front(c, it);
        }
        return 0;
    }
    struct cache_item *it = malloc(sizeof(*it) + klen);
    if (it == NULL)
        return -1;
    if (c->count >= c->capacity && c->tail) {
        struct cache_item *old = c->tail;
        cache_remove(c, cache_slot(c, old->key, old->klen, old->hash));
        c->evictions++;
        pp = cache_slot(c, key, klen, h);     /* the chain may have changed */
    }
    memcpy(it->key, key, klen);
    it->klen = klen;
    it->hash = h;
    it->val = val;
    it->hnext = *pp;
    *pp = it;
    cache_lru_push_front(c, it);
    c->count++;
    return 0;
}

int cache_del(struct cache *c, const char *key, size_t klen)
{
    struct cache_item **pp = cache_slot(c, key, klen, cache_hash(key, klen));
    if (*pp == NULL)
        return 0;
    cache_remove(c, pp);
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
