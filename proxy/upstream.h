/* proxy/upstream.h: being written. */
