/* Runs every unit suite; exit status 0 only when all pass. */
#include <stdlib.h>
#include "tests/unit/tests.h"

int main(void)
{
    SRunner *sr = srunner_create(h1_suite());
    srunner_add_suite(sr, bev_suite());
    srunner_add_suite(sr, splice_suite());
    srunner_add_suite(sr, upstream_suite());
    srunner_add_suite(sr, config_suite());
    srunner_add_suite(sr, routing_suite());
    srunner_add_suite(sr, meter_suite());
    srunner_add_suite(sr, redis_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
