"""Reference curves: a run's loss next to a known run's at the same point ("is my loss normal?").

The shipped references are upstream mini_qwen's published logs (``mini_data/reference``, attribution in its README),
logged against optimizer steps at upstream's batch. They are put on a common axis, what the run has seen (tokens for
PT, preference pairs for DPO), so that a run with another batch is compared at the same point. A reference may also
be a CSV of one's own with a ``tokens`` or ``pairs`` column and a ``loss`` column.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from utils import REPO_ROOT

REFERENCE_DIR = REPO_ROOT / "mini_data" / "reference"
ATTRIBUTION = "upstream mini_qwen's logs"
UPSTREAM_SEQUENCES, UPSTREAM_BLOCK, UPSTREAM_DPO_PAIRS = 1152, 1024, 384
# name -> (file, unit of the axis, amount of that unit per upstream optimizer step)
SHIPPED = {
    "upstream_pt": ("upstream_pt_log.csv", "tokens", UPSTREAM_SEQUENCES * UPSTREAM_BLOCK),
    "upstream_pt1": ("upstream_pt1_log.csv", "tokens", UPSTREAM_SEQUENCES * UPSTREAM_BLOCK),
    "upstream_pt2": ("upstream_pt2_log.csv", "tokens", UPSTREAM_SEQUENCES * UPSTREAM_BLOCK),
    "upstream_pt3": ("upstream_pt3_log.csv", "tokens", UPSTREAM_SEQUENCES * UPSTREAM_BLOCK),
    "upstream_dpo": ("upstream_dpo_log.csv", "pairs", UPSTREAM_DPO_PAIRS),
    "upstream_dpo1": ("upstream_dpo1_log.csv", "pairs", UPSTREAM_DPO_PAIRS),
    "upstream_dpo2": ("upstream_dpo2_log.csv", "pairs", UPSTREAM_DPO_PAIRS),
    "upstream_dpo3": ("upstream_dpo3_log.csv", "pairs", UPSTREAM_DPO_PAIRS),
}
UNITS = ("tokens", "pairs")


class ReferenceError(ValueError):
    """A reference that cannot be read; the message names it."""


@dataclass
class ReferenceCurve:
    """Loss against what was seen (``unit``: tokens or pairs), sorted by it."""

    name: str
    unit: str
    seen: list[float]
    loss: list[float]
    label: str

    def loss_at(self, seen: float) -> float | None:
        """The reference's loss at ``seen``, linearly between its logged points; None outside them (before its first
        logged point, or after its last: a reference is not extrapolated)."""
        if not self.seen or seen < self.seen[0] or seen > self.seen[-1]:
            return None
        i = bisect.bisect_left(self.seen, seen)
        if self.seen[i] == seen:
            return self.loss[i]
        x0, x1, y0, y1 = self.seen[i - 1], self.seen[i], self.loss[i - 1], self.loss[i]
        return y0 + (y1 - y0) * (seen - x0) / (x1 - x0)


def load_reference(name_or_path: str) -> ReferenceCurve:
    """A shipped reference by name (``SHIPPED``) or a CSV file with ``tokens``/``pairs`` and ``loss`` columns."""
    if name_or_path in SHIPPED:
        file, unit, per_step = SHIPPED[name_or_path]
        path, label = REFERENCE_DIR / file, f"{name_or_path} ({ATTRIBUTION})"
    else:
        path, unit, per_step, label = Path(name_or_path), None, None, Path(name_or_path).stem
        if not path.is_file():
            raise ReferenceError(
                f"reference {name_or_path!r}: neither a shipped one ({', '.join(SHIPPED)}) nor a file"
            )
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReferenceError(f"{path}: not a readable CSV ({err})") from err
    columns = set(rows[0]) if rows else set()
    if unit is None:
        unit = next((u for u in UNITS if u in columns), None)
        if unit is None or "loss" not in columns:
            raise ReferenceError(f"{path}: needs a 'loss' column and one of {UNITS}; it has {sorted(columns)}")
    points = []
    for line, row in enumerate(rows, start=2):
        try:
            seen = float(row["step"]) * per_step if per_step else float(row[unit])
            loss = float(row["loss"])
        except (KeyError, TypeError, ValueError) as err:
            raise ReferenceError(f"{path}, line {line}: no number in {err}") from err
        if math.isfinite(seen) and math.isfinite(loss):
            points.append((seen, loss))
    if not points:
        raise ReferenceError(f"{path}: no logged loss")
    points.sort()
    return ReferenceCurve(name_or_path, unit, [p[0] for p in points], [p[1] for p in points], label)
