/* proxy/admin.h: being written. */
