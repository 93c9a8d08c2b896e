/* Unit test suites (Check).  One suite per module; main.c runs them all. */
#ifndef TG_TESTS_H
#define TG_TESTS_H
#include <check.h>
Suite *h1_suite(void);
Suite *bev_suite(void);
Suite *splice_suite(void);
Suite *config_suite(void);
Suite *routing_suite(void);
Suite *meter_suite(void);
Suite *redis_suite(void);
Suite *upstream_suite(void);
#endif
