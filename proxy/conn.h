/* proxy/conn.h: being written. */
