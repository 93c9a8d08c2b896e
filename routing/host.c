/* routing/host.c: being written. */
typedef int tg_placeholder_host;
