/* routing/route.c: being written. */
typedef int tg_placeholder_route;
