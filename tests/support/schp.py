"""Full-size SCHP parsers with the reference fixtures' weights, built once per test session."""

from __future__ import annotations

from functools import cache

from pipelines.common.parsing.parser import HumanParser
from pipelines.contract import WeightSource


@cache
def golden_parser(dataset: str) -> HumanParser:
    """random_full(seed=0) regenerates exactly the recipe-v1 weights of shared/reference/schp."""
    return HumanParser.load(dataset, WeightSource.random_full(0))  # type: ignore[arg-type]


def release_golden_parsers() -> None:
    """Free the ~0.5 GB of full-size weights once a test module is done with them."""
    golden_parser.cache_clear()
