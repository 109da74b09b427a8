"""Leffa pose transfer (`fal-ai/leffa/pose-transfer`).

Importing this package only loads the schema; the model code is imported by workers.
"""

from pipelines.contract import EndpointSpec

from .schema import LeffaPoseTransferInput, LeffaPoseTransferOutput

ENDPOINT = EndpointSpec(
    endpoint_id="fal-ai/leffa/pose-transfer",
    input_model=LeffaPoseTransferInput,
    output_model=LeffaPoseTransferOutput,
    pipeline="pipelines.leffa.pipeline:LeffaPoseTransferPipeline",
    title="Leffa pose transfer",
)
