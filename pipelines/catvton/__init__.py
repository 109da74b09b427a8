"""CatVTON virtual try-on (`fal-ai/cat-vton`).

Importing this package only loads the schema; the model code is imported by workers.
"""

from pipelines.contract import EndpointSpec

from .schema import CatVTONInput, CatVTONOutput

ENDPOINT = EndpointSpec(
    endpoint_id="fal-ai/cat-vton",
    input_model=CatVTONInput,
    output_model=CatVTONOutput,
    pipeline=None,
    unavailable_reason="this pipeline is not implemented yet in this build of fal-onprem",
    title="CatVTON virtual try-on",
)
