"""``fal-onprem weights ...``: list, pull, verify, convert and import model weights.

Mounted by ``server.cli`` with ``add_subcommands(subparsers)``; also runnable as
``python -m weights.cli ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from weights import ManifestError, all_pipelines, find, manifest, pull_missing, state, weights_dir
from weights.download import Report, WeightsError, import_dir, plan_text, pull, to_fetch, unique_files, verify
from weights.summary import human, table

__all__ = ["add_subcommands", "main", "pull_missing", "run"]


def _canonical(name: str, known: list[str]) -> str:
    """A manifest name, also from an endpoint id or its hyphenated name (``fal-ai/cat-vton``, ``cat-vton``)."""
    if name in known:
        return name
    alias = name.removeprefix("fal-ai/").split("/")[0].replace("-", "")
    return alias if alias in known else name


def _pipelines(names: Sequence[str] | None) -> list[str]:
    known = all_pipelines()
    names = [_canonical(n, known) for n in names or []]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise WeightsError(f"unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names or known


def _licence_notes(pipelines: Sequence[str]) -> None:
    """One line per pipeline whose weights restrict use (non-commercial, research only)."""
    restricted = sorted({(p, f.license) for p in pipelines for f in manifest(p) if f.license_restricted})
    for p, lic in restricted:
        print(f"note: {p} uses weights under a restrictive licence: {lic}")


def served_pipelines() -> list[str]:
    """The manifests of the endpoints that run a model (the schema-only ones answer 503 with or without
    weights), with the components they require."""
    from pipelines import registry

    names = {
        spec.pipeline.split(".")[1]  # "pipelines.<name>.pipeline:Class" -> manifest name
        for spec in registry.endpoints().values()
        if spec.pipeline and spec.pipeline.startswith("pipelines.")
    }
    return [p for p in all_pipelines() if p in names]


def _pull_targets(args: argparse.Namespace) -> list[str]:
    if args.all and args.pipelines:
        raise WeightsError("name pipelines or pass --all, not both")
    return all_pipelines() if args.all else _pipelines(args.pipelines or served_pipelines())


def _print_report(report: Report, verb: str) -> int:
    for name, msg in report.errors.items():
        print(f"error: {msg}" if msg.startswith(name) else f"error: {name}: {msg}", file=sys.stderr)
    print(f"{verb}: {len(report.done)} done, {len(report.skipped)} already present, {len(report.errors)} failed")
    if report.failures:
        # the files were named once above; shared components would repeat them per pipeline
        names = sorted(report.failures)
        print(f"not ready: {', '.join(names)}; run `fal-onprem weights pull {' '.join(names)}`", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_list(args: argparse.Namespace) -> int:
    pipelines = _pipelines(args.pipeline)
    root = weights_dir(args.weights_dir)
    if args.summary:
        print(table(pipelines, markdown=args.markdown))
        return 0
    rows = []
    for p in pipelines:
        for f in manifest(p):
            path = find(f, root)
            size = path.stat().st_size if path is not None else f.expected_bytes
            rows.append(
                {
                    "pipeline": p,
                    "key": f.key,
                    "file": f.display_name,
                    "state": state(f, root),
                    "size": size,
                    "license": f.license,
                    "restricted": f.license_restricted,
                    "path": str(path) if path else None,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    head = ("pipeline", "key", "state", "size", "file", "licence")
    body = [
        (
            r["pipeline"],
            r["key"],
            r["state"],
            human(r["size"]),
            r["file"],
            ("RESTRICTED: " if r["restricted"] else "") + r["license"],
        )
        for r in rows
    ]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    for line in [head, *body]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    _licence_notes(pipelines)
    print(f"weights dir: {root.resolve()}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    pipelines = _pull_targets(args)
    _licence_notes(pipelines)
    if args.dry_run:
        print(f"pipelines: {', '.join(pipelines)}")
        print(plan_text(to_fetch(unique_files(pipelines), weights_dir(args.weights_dir))))
        return 0
    report = pull(
        pipelines,
        root=args.weights_dir,
        convert=not args.no_convert,
        delete_source=args.delete_source,
        token=args.token,
        hf_cache=args.hf_cache,
    )
    return _print_report(report, "pull")


def cmd_import(args: argparse.Namespace) -> int:
    report = import_dir(
        args.source,
        _pipelines(args.pipelines),
        root=args.weights_dir,
        convert=not args.no_convert,
        delete_source=args.delete_source,
        accept_mismatch=args.accept_mismatch,
    )
    return _print_report(report, "import")


def cmd_convert(args: argparse.Namespace) -> int:
    from weights.download import convert_files

    root = weights_dir(args.weights_dir)
    files = unique_files(_pipelines(args.pipelines))
    report = convert_files(files, root, force=args.force, delete_source=args.delete_source)
    return _print_report(report, "convert")


def cmd_verify(args: argparse.Namespace) -> int:
    checks = verify(_pipelines(args.pipelines), root=args.weights_dir, hashes=not args.size_only)
    for c in checks:
        stream = sys.stderr if c.bad else sys.stdout
        print(f"{c.status:16} {c.file}" + (f"  {c.detail}" if c.detail else ""), file=stream)
    bad = [c for c in checks if c.bad]
    missing = [c for c in checks if c.status == "missing"]
    print(f"verify: {len(checks) - len(bad) - len(missing)} ok, {len(bad)} bad, {len(missing)} missing")
    return 1 if bad else 0


def _add_commands(subparsers: argparse._SubParsersAction) -> None:
    """list / pull / verify / convert / import, each with ``func=run`` and its ``weights_func``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--weights-dir", type=Path, default=None, help="weights folder (default: $FAL_ONPREM_WEIGHTS_DIR or ./weights)"
    )

    def command(name: str, fn, help: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, parents=[common], help=help)
        p.set_defaults(func=run, weights_func=fn)
        if name in ("pull", "convert", "import"):
            p.add_argument(
                "--delete-source",
                action="store_true",
                help="delete originals from the weights dir once converted (only the conversions are served)",
            )
        return p

    p = command("list", cmd_list, "files per pipeline: ready / unconverted / missing")
    p.add_argument("--pipeline", action="append", help="only this pipeline (repeatable)")
    p.add_argument("--summary", action="store_true", help="per-pipeline disk and GPU-memory needs, licences")
    p.add_argument("--markdown", action="store_true", help="with --summary: a markdown table")
    p.add_argument("--json", action="store_true", help="machine-readable listing")

    p = command("pull", cmd_pull, "download (resumable) and convert missing weights")
    p.add_argument("pipelines", nargs="*", help="pipelines (default: the served ones)")
    p.add_argument("--all", action="store_true", help="every pipeline, also the schema-only ones")
    p.add_argument("--dry-run", action="store_true", help="say what would be downloaded, and how much, then stop")
    p.add_argument("--no-convert", action="store_true", help="download only")
    p.add_argument("--hf-cache", action="store_true", help="download into the Hugging Face cache instead")
    p.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN / `hf auth login`)")

    p = command("verify", cmd_verify, "check sizes and sha256 of present files and conversions")
    p.add_argument("pipelines", nargs="*", help="pipelines (default: all)")
    p.add_argument("--size-only", action="store_true", help="skip hashing")

    p = command("convert", cmd_convert, "one-time conversions to safetensors")
    p.add_argument("pipelines", nargs="*", help="pipelines (default: all)")
    p.add_argument("--force", action="store_true", help="redo conversions that exist")

    p = command("import", cmd_import, "copy weights from a folder (air-gapped installs)")
    p.add_argument("source", type=Path, help="a weights dir, a Hugging Face cache, or a flat folder of files")
    p.add_argument("pipelines", nargs="*", help="pipelines (default: all)")
    p.add_argument("--no-convert", action="store_true", help="copy only")
    p.add_argument(
        "--accept-mismatch",
        action="store_true",
        help="take a file whose size/sha256 differs from the manifest (logged and recorded; serving accepts it)",
    )


def add_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``weights`` command (list, pull, verify, convert, import) to a top-level CLI's
    subparsers. Every subcommand sets ``func=run``, so ``args.func(args)`` executes it."""
    parser = subparsers.add_parser("weights", help="list, pull, verify, convert and import model weights")
    _add_commands(parser.add_subparsers(dest="weights_command", required=True, metavar="COMMAND"))
    return parser


register = add_subcommands


def run(args: argparse.Namespace) -> int:
    """Execute a parsed weights command; user errors print a message and return 2, never a trace."""
    try:
        return args.weights_func(args)
    except (WeightsError, ManifestError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fal-onprem weights", description=__doc__.splitlines()[0])
    _add_commands(parser.add_subparsers(dest="weights_command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
