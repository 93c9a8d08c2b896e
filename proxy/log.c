/* proxy/log.c: being written. */
typedef int tg_placeholder_log;
