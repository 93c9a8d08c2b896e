/* proxy/admin.c: being written. */
typedef int tg_placeholder_admin;
