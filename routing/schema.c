/* routing/schema.c: being written. */
typedef int tg_placeholder_schema;
