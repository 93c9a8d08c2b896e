/* routing/balance.h: being written. */
