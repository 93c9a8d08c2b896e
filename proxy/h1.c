/* proxy/h1.c: being written. */
typedef int tg_placeholder_h1;
