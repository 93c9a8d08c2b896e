/* routing/balance.c: being written. */
typedef int tg_placeholder_balance;
