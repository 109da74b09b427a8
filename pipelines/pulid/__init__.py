"""PuLID (SDXL) identity-preserving portraits (`fal-ai/pulid`).

Importing this package only loads the schema; the model code is imported by workers.
"""

from pipelines.contract import EndpointSpec

from .schema import PuLIDInput, PuLIDOutput

ENDPOINT = EndpointSpec(
    endpoint_id="fal-ai/pulid",
    input_model=PuLIDInput,
    output_model=PuLIDOutput,
    pipeline="pipelines.pulid.pipeline:PuLIDPipeline",
    title="PuLID (SDXL) identity-preserving portraits",
)
