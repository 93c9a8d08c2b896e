/* proxy/upstream.c: being written. */
typedef int tg_placeholder_upstream;
