"""Fetching weights: ``pull`` (Hugging Face Hub or a plain URL), ``import`` (a local folder) and the
conversions that follow.

Only huggingface_hub's public API is used (``hf_hub_url``, ``get_hf_file_metadata``, ``build_hf_headers``,
``hf_hub_download``): ``HF_ENDPOINT``, ``HF_TOKEN``/``hf auth login`` and ``HF_HUB_OFFLINE`` are honoured.
Files land in ``<weights_dir>/<repo_id>/<path>``. Plain transfers (httpx) keep a partial
``<file>.<tag>.incomplete`` next to the target, so a dropped connection (within a run) or an interrupted
``pull`` (on the next run) resumes where it stopped with a Range request. Xet-stored files go through
``hf_hub_download`` when hf_xet is installed (its own chunked transfer). Files already in the weights dir or
the Hugging Face cache are reused; a file of the wrong size (a truncated copy) is fetched again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from weights import (
    WeightFile,
    converted_path,
    find,
    local_path,
    manifest,
    meta_path,
    missing_weights,
    record,
    size_problem,
    state,
    weights_dir,
)
from weights.summary import human

Say = Callable[[str], None]
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(RuntimeError):
    """A failure with a message fit for the user (no stack trace needed)."""


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # file -> message
    failures: dict[str, str] = field(default_factory=dict)  # pipeline -> why it is still not ready

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failures


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def unique_files(pipelines: Iterable[str]) -> list[WeightFile]:
    """The files of several pipelines, each once (shared components appear in several manifests)."""
    seen: dict[tuple, WeightFile] = {}
    for p in pipelines:
        for f in manifest(p):
            seen.setdefault((f.url, f.repo_id, f.filename, f.revision, f.owner, f.key), f)
    return list(seen.values())


# --------------------------------------------------------------------------------------------- hashing


def sha256_of(path: Path, *, progress: bool = True) -> str:
    """sha256 of a file, with a progress bar for large files."""
    from tqdm.auto import tqdm

    size = path.stat().st_size
    digest = hashlib.sha256()
    show = progress and size > 256 * 2**20
    with (
        path.open("rb") as fh,
        tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not show) as bar,
    ):
        while chunk := fh.read(8 * 2**20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def recorded_sha256(f: WeightFile, root: Path) -> str | None:
    """The sha256 recorded when ``pull`` downloaded the file (for files the manifest has none for)."""
    return record(f, root).get("sha256")


def _record(f: WeightFile, root: Path, **info: object) -> None:
    path = meta_path(f, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"repo_id": f.repo_id, "filename": f.filename, **info}, indent=1))


def _check_file(f: WeightFile, path: Path, expected_sha: str | None) -> str:
    """Size and sha256 of a fresh file against what is expected; returns its sha256."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        raise WeightsError(f"{f.display_name}: size {size} != expected {f.size}")
    digest = sha256_of(path)
    if expected_sha and digest != expected_sha.lower():
        raise WeightsError(f"{f.display_name}: sha256 {digest} != expected {expected_sha}")
    return digest


# ------------------------------------------------------------------------------------------- transfers


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` read at call time (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _resumable_get(
    url: str, dest: Path, *, tag: str, expected_size: int | None, headers: dict | None = None, attempts: int = 3
) -> None:
    """GET ``url`` into ``dest`` with httpx, keeping ``<dest>.<tag>.incomplete`` between attempts and runs
    so that a dropped connection or a later run resumes it with a Range request."""
    import httpx
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{tag[:16]}.incomplete")
    for stale in dest.parent.glob(f"{dest.name}.*.incomplete"):
        if stale != part:  # a partial file of another version of the file
            stale.unlink()
    if expected_size is not None and part.exists() and part.stat().st_size > expected_size:
        part.unlink()
    for attempt in range(1, attempts + 1):
        done = part.stat().st_size if part.exists() else 0
        if expected_size is not None and done == expected_size:
            break
        request = {**(headers or {}), "Accept-Encoding": "identity", **({"Range": f"bytes={done}-"} if done else {})}
        if done:
            _stderr(f"resuming {dest.name} at {done} bytes")
        try:
            with httpx.stream("GET", url, headers=request, follow_redirects=True, timeout=60) as r:
                r.raise_for_status()
                if done and r.status_code != 206:  # the server ignored the Range: start over
                    done = 0
                total = expected_size if expected_size is not None else None
                with (
                    part.open("r+b" if done else "wb") as fh,
                    tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=dest.name) as bar,
                ):
                    fh.seek(done)
                    fh.truncate()
                    for chunk in r.iter_bytes():  # as received: a drop keeps every byte so far
                        fh.write(chunk)
                        bar.update(len(chunk))
            break
        except httpx.TransportError as e:
            if attempt == attempts:
                raise WeightsError(f"{url}: {type(e).__name__}: {e}; run the same command again to resume") from e
    part.replace(dest)


def _use_xet(meta: object) -> bool:
    """Xet-stored files go through hf_hub_download when the hf_xet package can fetch their chunks."""
    if getattr(meta, "xet_file_data", None) is None:
        return False
    if os.environ.get("HF_HUB_DISABLE_XET", "").lower() in ("1", "true", "yes", "on"):
        return False
    return importlib.util.find_spec("hf_xet") is not None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _download_hub(f: WeightFile, root: Path, token: str | bool | None) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    endpoint = hub_endpoint()
    url = hf_hub_url(f.repo_id, f.filename, repo_type=f.repo_type, revision=f.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    if meta.etag is None or meta.commit_hash is None:
        raise WeightsError(f"{url} did not answer like a Hugging Face Hub (no ETag / X-Repo-Commit)")
    dest = local_path(f, root)
    if _use_xet(meta):
        # Xet storage: hf_xet fetches chunks in parallel (HF_HUB_DISABLE_XET=1 selects the resumable HTTP path)
        hf_hub_download(
            f.repo_id,
            f.filename,
            repo_type=f.repo_type,
            revision=f.revision,
            token=token,
            endpoint=endpoint,
            local_dir=root / f.repo_id,
        )
    else:
        headers = build_hf_headers(token=token)
        # Xet-stored files are fetched from the resolve URL itself (it redirects to a byte-serving bridge)
        source = url if meta.xet_file_data is not None else meta.location
        if _origin(source) != _origin(url):
            headers.pop("authorization", None)  # signed CDN URL: never forward the token
        size = meta.size if meta.size is not None else f.size
        _resumable_get(source, dest, tag=meta.etag, expected_size=size, headers=headers)
    lfs_sha = meta.etag if SHA256_RE.match(meta.etag) else None
    digest = _check_failing_removes(f, dest, f.sha256 or lfs_sha)
    _record(f, root, sha256=digest, etag=meta.etag, commit=meta.commit_hash, size=dest.stat().st_size)


def _download_url(f: WeightFile, root: Path) -> None:
    dest = local_path(f, root)
    tag = (f.sha256 or hashlib.sha256(f.url.encode()).hexdigest())[:16]
    _resumable_get(f.url, dest, tag=tag, expected_size=f.size)
    digest = _check_failing_removes(f, dest, f.sha256)
    _record(f, root, sha256=digest, url=f.url, size=dest.stat().st_size)


def _check_failing_removes(f: WeightFile, dest: Path, expected_sha: str | None) -> str:
    try:
        return _check_file(f, dest, expected_sha)
    except WeightsError:
        dest.unlink()  # a corrupt download must not look present
        raise


def _download_to_hf_cache(f: WeightFile, token: str | bool | None) -> None:
    from huggingface_hub import hf_hub_download

    path = Path(
        hf_hub_download(
            f.repo_id,
            f.filename,
            repo_type=f.repo_type,
            revision=f.revision,
            token=token,
            endpoint=hub_endpoint(),
        )
    )
    if f.sha256:
        _check_file(f, path, f.sha256)


def download(f: WeightFile, root: Path, *, token: str | bool | None = None, hf_cache: bool = False) -> None:
    """Fetch one file into the weights dir (or the Hugging Face cache). Raises WeightsError."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise WeightsError(f"{f.display_name}: HF_HUB_OFFLINE is set; copy the files with `weights import`")
    try:
        if f.url:
            _download_url(f, root)
        elif hf_cache:
            _download_to_hf_cache(f, token)
        else:
            _download_hub(f, root, token)
    except WeightsError:
        raise
    except GatedRepoError as e:
        raise WeightsError(
            f"{f.repo_id} is gated: accept its terms on the Hub, then set HF_TOKEN or run `hf auth login` ({e})"
        ) from e
    except RepositoryNotFoundError as e:
        raise WeightsError(f"{f.repo_id} not found or private (set HF_TOKEN if it is private): {e}") from e
    except HfHubHTTPError as e:
        raise WeightsError(f"{f.display_name}: {e}") from e
    except Exception as e:  # network (httpx) errors, disk full: report, don't crash the whole pull
        raise WeightsError(f"{f.display_name}: {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------------------- conversion


def convert_files(
    files: Iterable[WeightFile],
    root: Path,
    *,
    force: bool = False,
    delete_source: bool = False,
    say: Say = _stderr,
) -> Report:
    """Run the pending conversions of the files that are present. ``delete_source`` removes the
    original from the weights dir once converted (Leffa's 20.9 GB pickle is not needed to serve)."""
    from weights.convert import run_conversion

    report = Report()
    for f in files:
        if not f.convert:
            continue
        dst = converted_path(f, root)
        assert dst is not None
        if dst.exists() and not force:
            report.skipped.append(f.display_name)
            _delete_source(f, root, delete_source, say)
            continue
        src = find(f, root)
        if src is None:
            report.errors[f.display_name] = "not downloaded; cannot convert"
            continue
        if problem := size_problem(f, src, root):
            report.errors[f.display_name] = f"damaged: {problem}; cannot convert"
            continue
        say(f"converting {f.display_name} ({f.convert}) -> {dst}")
        try:
            run_conversion(f.convert, src, dst)
            report.done.append(f.display_name)
        except Exception as e:  # a bad file or a missing converter module: report it, go on
            report.errors[f.display_name] = f"conversion {f.convert} failed: {type(e).__name__}: {e}"
            continue
        _delete_source(f, root, delete_source, say)
    return report


def _delete_source(f: WeightFile, root: Path, wanted: bool, say: Say) -> None:
    source = local_path(f, root)  # never files of the shared Hugging Face cache
    if wanted and source.is_file():
        say(f"deleting {source} (converted)")
        source.unlink()


def _finish(report: Report, pipelines: Iterable[str], root: Path, *, converted: bool = True) -> Report:
    """Record the pipelines still not ready (with ``converted=False``, only missing files count)."""
    for p in pipelines:
        error = missing_weights(p, root)
        if error is not None and (converted or error.missing):
            report.failures[p] = str(error)
    return report


def to_fetch(files: Iterable[WeightFile], root: Path) -> list[WeightFile]:
    """The files ``pull`` downloads: missing ones and damaged (wrong-size) ones."""
    return [f for f in files if state(f, root) in ("missing", "damaged")]


def plan_text(files: list[WeightFile]) -> str:
    """What ``pull`` will download, each file once, with the total size."""
    if not files:
        return "nothing to download"
    known = sum(f.expected_bytes or 0 for f in files)
    unknown = sum(f.expected_bytes is None for f in files)
    total = f"{human(known)} + {unknown} of unknown size" if unknown and known else human(known)
    total = "size unknown" if unknown == len(files) else total
    lines = [f"will download {len(files)} file(s), {total}:"]
    lines += [f"  {human(f.expected_bytes):>9}  {f.display_name}" for f in files]
    return "\n".join(lines)


def pull(
    pipelines: Iterable[str],
    *,
    root: Path | str | None = None,
    convert: bool = True,
    delete_source: bool = False,
    token: str | bool | None = None,
    hf_cache: bool = False,
    say: Say = _stderr,
) -> Report:
    """Download what the pipelines lack, then convert. Never raises for a single bad file."""
    pipelines = list(pipelines)
    root = weights_dir(root)
    files = unique_files(pipelines)
    fetch = to_fetch(files, root)
    say(plan_text(fetch))
    report = Report(skipped=[f.display_name for f in files if f not in fetch])
    for f in fetch:
        damaged = local_path(f, root)
        if damaged.is_file():
            say(f"fetching again: {size_problem(f, damaged, root)}")
            damaged.unlink()
        say(f"downloading {f.display_name} ({human(f.expected_bytes)})")
        try:
            download(f, root, token=token, hf_cache=hf_cache)
            report.done.append(f.display_name)
        except WeightsError as e:
            report.errors[f.display_name] = str(e)  # printed once, in the report
    if convert:
        present = [f for f in files if find(f, root) is not None]  # failed fetches are reported already
        conv = convert_files(present, root, delete_source=delete_source, say=say)
        report.done += conv.done
        report.errors.update(conv.errors)
    return _finish(report, pipelines, root, converted=convert)


# ---------------------------------------------------------------------------------------------- import


def _candidates(f: WeightFile, src: Path) -> list[Path]:
    """Where a file may sit in a folder brought from another machine."""
    org_name = f"{f.repo_type}s--{f.repo_id.replace('/', '--')}"
    out = [src / f.repo_id / f.filename]  # a weights dir
    for hub in (src, src / "hub"):  # a Hugging Face cache (HF_HOME or HF_HUB_CACHE)
        out += sorted((hub / org_name / "snapshots").glob(f"*/{f.filename}"))
    out += [src / f.filename, src / Path(f.filename).name]  # a flat folder of files
    return out


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".importing")
    if src.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dst, ignore_errors=True)
    else:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)


def _mismatch(f: WeightFile, path: Path) -> str | None:
    """How ``path`` differs from the manifest's size / sha256 (None when it does not, or nothing is pinned)."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return f"size {size} bytes, expected {f.size}"
    if f.sha256 and (digest := sha256_of(path)) != f.sha256.lower():
        return f"sha256 {digest}, expected {f.sha256}"
    return None


def _import_file(f: WeightFile, src: Path, root: Path, mismatch: str | None, say: Say) -> None:
    dest = local_path(f, root)
    if mismatch:
        say(f"warning: importing {src} although it does not match the manifest ({mismatch}): --accept-mismatch")
    else:
        say(f"importing {src}")
    _copy(src, dest)
    size = dest.stat().st_size
    info = {"accepted_mismatch": mismatch} if mismatch else {}
    _record(f, root, sha256=sha256_of(dest), size=size, source=str(src), **info)


def import_dir(
    src: Path | str,
    pipelines: Iterable[str],
    *,
    root: Path | str | None = None,
    convert: bool = True,
    delete_source: bool = False,
    accept_mismatch: bool = False,
    say: Say = _stderr,
) -> Report:
    """Copy weights from a folder (another weights dir, a Hugging Face cache, or a flat folder) for
    air-gapped installs; converted outputs found under ``<src>/converted/`` are taken as they are.

    A file found with another size or sha256 than the manifest's is reported as a mismatch and not copied;
    ``accept_mismatch`` copies it anyway, says so, and records it so that serving accepts that exact file.
    """
    pipelines = list(pipelines)
    src = Path(src)
    root = weights_dir(root)
    if not src.is_dir():
        raise WeightsError(f"{src} is not a folder")
    files = unique_files(pipelines)
    report = Report()
    for f in files:
        if state(f, root) == "ready":
            report.skipped.append(f.display_name)
            continue
        target = converted_path(f, root)
        if target is not None:
            shipped = src / target.relative_to(root)
            if shipped.exists():
                say(f"importing {shipped}")
                _copy(shipped, target)
                report.done.append(f.display_name)
                continue
        if state(f, root) == "unconverted":
            continue  # present, conversion pending
        found = [c for c in _candidates(f, src) if c.is_file()]
        if not found:
            report.errors[f.display_name] = f"not found in {src}"
            continue
        mismatches = []
        for cand in found:
            problem = _mismatch(f, cand)
            if problem is None or accept_mismatch:
                _import_file(f, cand, root, problem, say)
                report.done.append(f.display_name)
                break
            mismatches.append(f"{cand}: {problem}")
        else:
            report.errors[f.display_name] = (
                f"mismatch: {'; '.join(mismatches)} (`weights import --accept-mismatch` takes such a file on purpose)"
            )
    if convert:
        present = [f for f in files if find(f, root) is not None]  # failed fetches are reported already
        conv = convert_files(present, root, delete_source=delete_source, say=say)
        report.done += conv.done
        report.errors.update(conv.errors)
    return _finish(report, pipelines, root, converted=convert)


# ---------------------------------------------------------------------------------------------- verify


@dataclass
class Check:
    file: str
    path: Path | None
    status: str  # ok | unpinned | accepted | missing | size-mismatch | sha256-mismatch | unreadable
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.status in ("size-mismatch", "sha256-mismatch", "unreadable")


def _check_safetensors(path: Path) -> str | None:
    """None if every safetensors file at ``path`` (file or folder) opens; else the problem."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        return "no safetensors files"
    for p in files:
        try:
            with safe_open(str(p), framework="pt") as fh:
                fh.keys()
        except Exception as e:
            return f"{p.name}: {e}"
    return None


def verify(pipelines: Iterable[str], *, root: Path | str | None = None, hashes: bool = True) -> list[Check]:
    """Check sizes and sha256 of the files present, and that conversions open as safetensors."""
    root = weights_dir(root)
    checks: list[Check] = []
    for f in unique_files(pipelines):
        path = find(f, root)
        conv = converted_path(f, root)
        if conv is not None and conv.exists():
            problem = _check_safetensors(conv)
            checks.append(
                Check(f"{f.display_name} (converted)", conv, "unreadable" if problem else "ok", problem or "")
            )
        if path is None:
            if conv is None or not conv.exists():
                checks.append(Check(f.display_name, None, "missing"))
            continue
        size = path.stat().st_size
        accepted = record(f, root).get("accepted_mismatch")
        if accepted and size_problem(f, path, root) is None:
            digest = sha256_of(path) if hashes else recorded_sha256(f, root)
            ok = digest == recorded_sha256(f, root)
            checks.append(
                Check(f.display_name, path, "accepted" if ok else "sha256-mismatch", f"imported on purpose: {accepted}")
            )
            continue
        if f.size is not None and size != f.size:
            checks.append(Check(f.display_name, path, "size-mismatch", f"{size} bytes, expected {f.size}"))
            continue
        expected = f.sha256 or recorded_sha256(f, root)
        if not hashes:
            checks.append(Check(f.display_name, path, "ok", "size only"))
            continue
        digest = sha256_of(path)
        if expected is None:
            checks.append(Check(f.display_name, path, "unpinned", f"sha256 {digest} (no reference)"))
        elif digest != expected.lower():
            checks.append(Check(f.display_name, path, "sha256-mismatch", f"{digest}, expected {expected}"))
        else:
            checks.append(Check(f.display_name, path, "ok", "sha256 matches"))
    return checks
