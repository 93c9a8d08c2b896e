/* routing/schema.h: being written. */
