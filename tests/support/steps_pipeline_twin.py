"""A second synthetic stepwise endpoint (`test/steps-twin`), so that memory-budget tests have two pipelines."""

from __future__ import annotations

from pipelines.contract import EndpointSpec
from tests.support.steps_pipeline import StepsInput, StepsOutput, StepsPipeline


class StepsTwinPipeline(StepsPipeline):
    endpoint_id = "test/steps-twin"


ENDPOINT = EndpointSpec(
    endpoint_id="test/steps-twin",
    input_model=StepsInput,
    output_model=StepsOutput,
    pipeline="tests.support.steps_pipeline_twin:StepsTwinPipeline",
    title="Test-only synthetic stepwise pipeline (a second one)",
)
