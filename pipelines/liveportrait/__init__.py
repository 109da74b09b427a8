"""LivePortrait expression / head-pose editing (`fal-ai/live-portrait/image`).

Importing this package only loads the schema; the model code is imported by workers.
"""

from pipelines.contract import EndpointSpec

from .schema import LivePortraitImageInput, LivePortraitImageOutput

ENDPOINT = EndpointSpec(
    endpoint_id="fal-ai/live-portrait/image",
    input_model=LivePortraitImageInput,
    output_model=LivePortraitImageOutput,
    pipeline="pipelines.liveportrait.pipeline:LivePortraitPipeline",
    title="LivePortrait expression / head-pose editing",
)
