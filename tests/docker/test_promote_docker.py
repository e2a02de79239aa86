"""The promotion scenarios of tests/grpc/test_promote_local.py on the docker runtime.

Same tests, same assertions: only ``runtime_args`` differs (the compatible image, built or reused by
tests/docker/conftest.py's ``image`` fixture). Importing the test functions makes pytest collect them
here with this module's fixtures, so the two runtimes cannot drift apart.
"""

from __future__ import annotations

import pytest

from tests.grpc.test_promote_local import (  # noqa: F401  (fixtures and tests collected here)
    deploy,
    deploy_two_processes,
    models_template,
    test_a_candidate_that_fails_smoke_is_rolled_back_and_no_request_fails,
    test_concurrent_promotions_are_serialized_and_the_ledger_stays_consistent,
    test_promotion_succeeds_survives_a_restart_and_rolls_back,
    test_requests_never_fail_during_promotion_with_two_server_processes,
    test_requests_on_the_label_never_fail_during_promotion_and_rollback,
    test_unusable_versions_are_refused_before_the_server_is_touched,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def runtime_args(image: str) -> list[str]:
    return ["--runtime", "docker", "--image", image]
