/* routing/cache.c: being written. */
typedef int tg_placeholder_cache;
