"""What is measured: the table's rows (Metric), every run's values, their medians and ratios."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

SERVER_NAMES = ("distribution", "ours")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: str = ""  # shown in the table
    min_ratio: float | None = None  # met when ratio >= this
    max_ours: float | None = None  # met when ours <= this (absolute)

    def ratio(self, theirs: float | None, ours: float | None) -> float | None:
        """Above 1 when ours is better: ours / distribution for throughput, the inverse for
        latency and memory."""
        if theirs is None or not ours:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


@dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {s: {} for s in SERVER_NAMES}
    )
    rss_procs: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, server: str, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.values[server].setdefault(k, []).append(v)

    def median(self, server: str, key: str) -> float | None:
        vals = self.values[server].get(key)
        return statistics.median(vals) if vals else None


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"
