/* routing/host.h: being written. */
