"""A test-only endpoint whose model is not built (`test/unbuilt`): the API validates it and answers 503.

Every real endpoint is served now; this one keeps the "schema only" path of the registry tested.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipelines.common.schema_types import OutputFormat
from pipelines.contract import EndpointSpec


class UnbuiltInput(BaseModel):
    image_url: str = Field(description="Any image")
    output_format: OutputFormat = "png"


class UnbuiltOutput(BaseModel):
    ok: bool


ENDPOINT = EndpointSpec(
    endpoint_id="test/unbuilt",
    input_model=UnbuiltInput,
    output_model=UnbuiltOutput,
    pipeline=None,
    unavailable_reason="this pipeline is not implemented yet in this build of fal-onprem",
    title="Test-only endpoint without a model",
)
