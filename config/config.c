/* config/config.c: being written. */
typedef int tg_placeholder_config;
