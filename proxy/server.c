/* proxy/server.c: being written. */
typedef int tg_placeholder_server;
