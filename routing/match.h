/* routing/match.h: being written. */
