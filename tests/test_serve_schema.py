"""schemathesis against the served OpenAPI document: no 500s, every response matches the schema.

Every operation but the endless event stream gets a bounded number of
generated requests (schemathesis's strategies driven by Hypothesis), against
a server with the builtin file source and an instrumented one; each answer
goes through schemathesis's checks (no server error, a documented status, a
body matching the documented schema, the documented content type).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from instrumented import InstrumentedSource
from schemathesis.config import SchemathesisConfig
from served import TOKEN, serving

import headwater_file
from headwater import RatePolicy

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 12  # per operation: about 200 requests in all


def test_every_operation_answers_as_documented(tmp_path: Path) -> None:
    plugins = {"file": headwater_file, "inst": InstrumentedSource("inst", RatePolicy(concurrency=2))}
    auth = {"authorization": f"Bearer {TOKEN}"}
    with serving(tmp_path / "dest", plugins) as served:
        # The token goes through the document's own security scheme, so that schemathesis also
        # checks that a request without it is refused. A schema-valid request may still name a
        # source that is not loaded, or a target its source refuses: 400 is a right answer there.
        accepted = ["2xx", "400", "401", "403", "404"]
        config = SchemathesisConfig.from_dict(
            {
                "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
                "checks": {"positive_data_acceptance": {"expected-statuses": accepted}},
            }
        )
        schema = schemathesis.openapi.from_url(
            f"{served.url}/api/v1/schema/openapi.json", headers=auth, config=config
        )
        operations = [result.ok() for result in schema.exclude(path="/api/v1/events").get_all_operations()]
        assert len(operations) >= 15, [op.label for op in operations]
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
            def answers_as_documented(case: schemathesis.Case) -> None:
                case.call_and_validate()

            answers_as_documented()
