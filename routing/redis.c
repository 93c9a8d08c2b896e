/* routing/redis.c: being written. */
typedef int tg_placeholder_redis;
