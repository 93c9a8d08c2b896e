/* proxy/conn.c: being written. */
typedef int tg_placeholder_conn;
