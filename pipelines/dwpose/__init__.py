"""DWPose whole-body pose image (`fal-ai/dwpose`).

Importing this package only loads the schema; the model code is imported by workers.
"""

from pipelines.contract import EndpointSpec

from .schema import DWPoseInput, DWPoseOutput

ENDPOINT = EndpointSpec(
    endpoint_id="fal-ai/dwpose",
    input_model=DWPoseInput,
    output_model=DWPoseOutput,
    pipeline="pipelines.dwpose.pipeline:DWPosePipeline",
    title="DWPose whole-body pose image",
)
