"""Metric names: the accepted names and patterns, parsing and one-line errors."""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.registry import did_you_mean

FIXED_NAMES = (
    "nmi",
    "c_nmi",
    "f1",
    "c_f1",
    "mAP_c",
    "c_mAP_c",
    "mAP_1000",
    "c_mAP_1000",
    "mAP_lim",
    "c_mAP_lim",
    "dists@intra",
    "dists@inter",
    "dists@intra_over_inter",
    "precision_at_1",
    "c_precision_at_1",
    "r_precision",
    "c_r_precision",
    "map_at_r",
    "c_map_at_r",
    "mean_reciprocal_rank",
    "c_mean_reciprocal_rank",
    "ami",
    "c_ami",
)
RANK_METRICS = ("precision_at_1", "r_precision", "map_at_r", "mean_reciprocal_rank")
PATTERNS = ("e_recall@<k>", "c_recall@<k>", "rho_spectrum@<m>")
RECALL_PREFIXES = ("e_recall", "c_recall")
RHO_PREFIX = "rho_spectrum"

_INT = re.compile(r"[+-]?\d+")


def list_metrics() -> list[str]:
    """Every accepted metric name; ``<k>`` is a positive int, ``<m>`` any int."""
    return [PATTERNS[0], PATTERNS[1], *FIXED_NAMES, PATTERNS[2]]


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name.

    kind: 'recall', 'map', 'rank' (precision_at_1, r_precision, map_at_r,
    mean_reciprocal_rank), 'nmi', 'ami', 'f1', 'dists' or 'rho'; space: 'e'
    (Euclidean) or 'c' (cosine) where it applies; arg: k of recall, m of rho, the
    rank limit of mAP ('c', '1000', 'lim'), the rank metric's name or the dists variant.
    """

    name: str
    kind: str
    space: str | None
    arg: int | str | None


def _error(name: str, reason: str | None = None) -> ValueError:
    allowed = ", ".join(list_metrics())
    if reason is None:
        return ValueError(f"unknown metric {name!r}{_suggest(name)}; allowed: {allowed}")
    return ValueError(f"bad metric {name!r}: {reason}; allowed: {allowed}")


def _suggest(name: str) -> str:
    candidates = list(FIXED_NAMES)
    suffix = name.split("@", 1)[1] if "@" in name else "1"
    for prefix in (*RECALL_PREFIXES, RHO_PREFIX):
        candidates.append(f"{prefix}@{suffix}")
    for cand in candidates:  # a case slip: 'NMI', 'map_c'
        if cand.lower() == name.lower() and cand != name:
            return f" (did you mean {cand!r}?)"
    return did_you_mean(name, [c for c in candidates if c != name])


def parse_metric_name(name: str) -> MetricSpec:
    """Parse *name*; raises ValueError (one line, with what is allowed) when it is not accepted."""
    if not isinstance(name, str):
        raise ValueError(f"metric names must be strings, got {name!r}; allowed: {', '.join(list_metrics())}")
    if name in FIXED_NAMES:
        space = "c" if name.startswith("c_") else "e"
        base = name[2:] if name.startswith("c_") else name
        if base.startswith("mAP_"):
            return MetricSpec(name, "map", space, base[4:])
        if base in ("nmi", "ami", "f1"):
            return MetricSpec(name, base, space, None)
        if base in RANK_METRICS:
            return MetricSpec(name, "rank", space, base)
        return MetricSpec(name, "dists", None, name.split("@", 1)[1])
    prefix, sep, arg = name.partition("@")
    if sep and prefix in RECALL_PREFIXES:
        if not _INT.fullmatch(arg) or int(arg) <= 0:
            raise _error(name, "k must be a positive integer")
        if str(int(arg)) != arg:
            raise ValueError(f"bad metric {name!r}: write k as a plain integer (did you mean '{prefix}@{int(arg)}'?)")
        return MetricSpec(name, "recall", prefix[0], int(arg))
    if sep and prefix == RHO_PREFIX:
        if not _INT.fullmatch(arg):
            raise _error(name, "m must be an integer")
        if str(int(arg)) != arg:
            raise ValueError(f"bad metric {name!r}: write m as a plain integer (did you mean '{prefix}@{int(arg)}'?)")
        return MetricSpec(name, "rho", None, int(arg))
    raise _error(name)


def check_metric_name(name: str) -> None:
    """Raise ValueError with a one-line message when *name* is not an accepted metric name."""
    parse_metric_name(name)


_SHORT = {"e_recall": "R", "c_recall": "cR"}


def display_name(name: str) -> str:
    """Compact label for tables and logs: e_recall@1 -> R@1, nmi -> NMI, map_at_r -> MAP@R, c_f1 -> cF1; others unchanged."""
    base, sep, k = name.partition("@")
    if sep and base in _SHORT:
        return f"{_SHORT[base]}@{k}"
    short = {"nmi": "NMI", "ami": "AMI", "f1": "F1", "precision_at_1": "P@1", "r_precision": "RP",
             "map_at_r": "MAP@R", "mean_reciprocal_rank": "MRR"}
    if name.startswith("c_") and name[2:] in short:
        return "c" + short[name[2:]]
    return short.get(name, name)
