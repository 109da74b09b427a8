"""Per-pipeline disk and GPU-memory needs, computed from the manifests (``weights list --summary``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weights import WeightFile, all_pipelines, manifest, manifest_info

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def converted_bytes(f: WeightFile) -> int | None:
    """Estimated size of the conversion of ``f`` (0 when it has none)."""
    if not f.convert:
        return 0
    from weights.convert import converter

    try:
        per_param = converter(f.convert).bytes_per_param
    except LookupError:
        per_param = None
    if per_param is not None and f.params:
        return int(f.params * per_param)
    return f.expected_bytes


def gpu_bytes(f: WeightFile, half_bytes: int = 2) -> int:
    """Memory the file's tensors take on the GPU in the dtype the pipeline keeps them in. A manifest's dtype
    is the one at the pipeline's default GPU dtype: 16-bit files follow the pipeline's dtype (``half_bytes``
    per value when it runs in another), float32 ones stay float32 (VAEs, ID encoders, parsers)."""
    if f.dtype == "onnx":
        return f.expected_bytes or 0
    if f.params and f.dtype in ("fp16", "bf16"):
        return f.params * half_bytes
    if f.params and f.dtype in DTYPE_BYTES:
        return f.params * DTYPE_BYTES[f.dtype]
    return 0


def resident_bytes(pipeline: str, half_bytes: int = 2) -> int:
    """The device memory a pipeline's weights take once loaded (its manifest and those it requires)."""
    return sum(gpu_bytes(f, half_bytes) for f in manifest(pipeline))


@dataclass
class PipelineNeeds:
    pipeline: str
    files: int
    download: int
    converted: int
    gpu_weights: int
    unknown_sizes: int
    licenses: list[str] = field(default_factory=list)
    restricted: list[str] = field(default_factory=list)
    gpu_note: str = ""


def needs(pipeline: str) -> PipelineNeeds:
    files = manifest(pipeline)
    licenses: list[str] = []
    restricted: list[str] = []
    for f in files:
        if f.license and f.license not in licenses:
            licenses.append(f.license)
        if f.license_restricted and f.license not in restricted:
            restricted.append(f.license)
    return PipelineNeeds(
        pipeline=pipeline,
        files=len(files),
        download=sum(f.expected_bytes or 0 for f in files),
        converted=sum(converted_bytes(f) or 0 for f in files),
        gpu_weights=sum(gpu_bytes(f) for f in files),
        unknown_sizes=sum(f.expected_bytes is None for f in files),
        licenses=licenses,
        restricted=restricted,
        gpu_note=manifest_info(pipeline).get("gpu_note", ""),
    )


def totals(pipelines: list[str]) -> tuple[int, int]:
    """(download, kept on disk after ``--delete-source``) for several pipelines, shared files once."""
    from weights.download import unique_files

    files = unique_files(pipelines)
    download = sum(f.expected_bytes or 0 for f in files)
    kept = sum((converted_bytes(f) or 0) if f.convert else (f.expected_bytes or 0) for f in files)
    return download, kept


def table(pipelines: list[str], *, markdown: bool = False) -> str:
    """The summary table; ``markdown`` for weights/README.md."""
    rows = [needs(p) for p in pipelines]
    head = ["pipeline", "files", "download", "+ converted", "GPU weights", "licences"]
    body = []
    for r in rows:
        approx = f" (+{r.unknown_sizes} unknown)" if r.unknown_sizes else ""
        lic = "; ".join(f"**{x}**" if markdown and x in r.restricted else x for x in r.licenses)
        body.append(
            [
                r.pipeline,
                str(r.files),
                human(r.download) + approx,
                human(r.converted),
                human(r.gpu_weights) if r.gpu_weights else "?",
                lic,
            ]
        )
    download, kept = totals(pipelines)
    total = f"all of them: {human(download)} to download, {human(kept)} on disk after --delete-source"
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        notes = [f"- **{r.pipeline}**: {r.gpu_note}" for r in rows if r.gpu_note]
        return "\n".join([*lines, "", f"Shared files counted once, {total}.", "", *notes])
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    lines = [fmt.format(*head)] + [fmt.format(*row) for row in body]
    lines += [total]
    lines += [f"{r.pipeline}: {r.gpu_note}" for r in rows if r.gpu_note]
    return "\n".join(lines)


README = Path(__file__).parent / "README.md"
BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"


def update_readme(path: Path = README) -> bool:
    """Rewrite the generated table of weights/README.md; True when it changed."""
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{table(all_pipelines(), markdown=True)}\n{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":  # python -m weights.summary: refresh weights/README.md
    print("updated" if update_readme() else "up to date")
