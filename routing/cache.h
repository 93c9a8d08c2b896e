/* routing/cache.h: being written. */
