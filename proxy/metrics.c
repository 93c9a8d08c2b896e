/* proxy/metrics.c: being written. */
typedef int tg_placeholder_metrics;
