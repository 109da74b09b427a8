"""CatVTON virtual try-on (`fal-ai/cat-vton`).

Importing this package only loads the schema; the model code is imported by workers.
Weights: CC BY-NC-SA 4.0 (non-commercial), see ``weights/manifests/catvton.json``.
"""

from pipelines.contract import EndpointSpec

from .schema import CatVTONInput, CatVTONOutput

ENDPOINT = EndpointSpec(
    endpoint_id="fal-ai/cat-vton",
    input_model=CatVTONInput,
    output_model=CatVTONOutput,
    pipeline="pipelines.catvton.pipeline:CatVTONPipeline",
    title="CatVTON virtual try-on",
)
