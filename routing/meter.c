/* routing/meter.c: being written. */
typedef int tg_placeholder_meter;
