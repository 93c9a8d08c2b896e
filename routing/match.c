/* routing/match.c: being written. */
typedef int tg_placeholder_match;
