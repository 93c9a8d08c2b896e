/* proxy/server.h: being written. */
