"""``curation_report.md`` and its figures, computed from the ledger alone (``tools.curate.documents``).

Every input row has exactly one fate: removed by one step (the first that removed it) for one reason, or kept.
The report checks that before it writes anything: the rows the ledger holds are the rows the input files hold,
each passed row ends up removed by a later step or kept, and the kept rows are the rows of the curated copy. A
mismatch is a bug and stops the report.

The ledger is read one task's files at a time (a task is a slice of the input files), so memory follows the
largest task, not the corpus. Histograms take two passes: value ranges first, counts second.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from tools.curate.documents import MEASURES  # noqa: E402
from tools.curate.pipeline import DOCUMENT_NAMES, REMOVAL_STEPS, STEP_TITLES, applied_steps  # noqa: E402
from tools.curate.recipe import QUALITY_BOUNDS, CurateArguments  # noqa: E402

logger = logging.getLogger(__name__)

FIRST_PASS = ["rows", "quality", "heuristics", "passed"]
LATER_PASSES = ["exact_duplicate", "decontamination", "near_duplicate", "kept"]
# Histogram fields whose values span orders of magnitude.
LOG_FIELDS = {"chars", "words", "perplexity"}
BINS = 40


class CountMismatch(RuntimeError):
    """The ledger does not account for every row exactly once."""


def _ranks(ledger: Path) -> list[str]:
    return sorted({f.name for step in FIRST_PASS for f in (ledger / step).glob("*.parquet")})


def _read(ledger: Path, steps: list[str], rank_file: str) -> pd.DataFrame:
    frames = [
        pq.read_table(ledger / step / rank_file).to_pandas() for step in steps if (ledger / step / rank_file).is_file()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def task_fates(ledger: Path, rank_file: str) -> pd.DataFrame:
    """One row per input row of this task: its measures and its ``fate`` (a removal step, or ``kept``)."""
    first = _read(ledger, FIRST_PASS, rank_file)
    if first.empty:
        return first
    later = _read(ledger, LATER_PASSES, rank_file)
    first["fate"] = first["step"]
    passed = first["step"] == "passed"
    if later.empty:
        later = pd.DataFrame(columns=["path", "row", "step", "reason", "detail", "cluster", "example"])
    if later.duplicated(["path", "row"]).any():
        raise CountMismatch(f"{rank_file}: a row is in more than one later ledger")
    merged = first.loc[passed, ["path", "row"]].merge(later, on=["path", "row"], how="left", validate="1:1")
    if merged["step"].isna().any():
        lost = merged.loc[merged["step"].isna(), ["path", "row"]].head(3).values.tolist()
        raise CountMismatch(f"{rank_file}: rows passed the filters but were neither kept nor removed, e.g. {lost}")
    if len(later) != passed.sum():
        raise CountMismatch(f"{rank_file}: {len(later)} later ledger rows for {passed.sum()} passed rows")
    for column in ("step", "reason", "detail", "cluster"):
        first.loc[passed, "fate" if column == "step" else column] = merged[column].to_numpy()
    first.loc[passed, "example"] = merged["example"].to_numpy()
    return first


class Totals:
    """Counts accumulated over tasks: documents, bytes, counted tokens and the bytes of counted documents, per
    (domain, language, fate) and per (fate, reason); histogram values per field."""

    def __init__(self):
        self.groups = defaultdict(lambda: np.zeros(4))
        self.reasons = defaultdict(lambda: np.zeros(4))
        self.examples: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.decontaminated: list[dict] = []
        self.twins: dict[tuple[str, object], str] = {}

    def add(self, frame: pd.DataFrame, examples_per_reason: int) -> None:
        frame = frame.assign(
            counted_tokens=frame["tokens"].fillna(0), counted_bytes=frame["bytes"].where(frame["tokens"].notna(), 0)
        )
        values = ["one", "bytes", "counted_tokens", "counted_bytes"]
        frame["one"] = 1
        for key, row in frame.groupby(["domain", "language", "fate"])[values].sum().iterrows():
            self.groups[key] += row.to_numpy(dtype=float)
        for key, row in frame.groupby(["fate", "reason"])[values].sum().iterrows():
            self.reasons[key] += row.to_numpy(dtype=float)
        shown = frame[frame["example"].notna() & (frame["fate"] != "kept")]
        for row in shown.itertuples():
            bucket = self.examples[(row.fate, row.reason)]
            if len(bucket) < examples_per_reason:
                bucket.append(row._asdict())
        self.decontaminated += frame[frame["fate"] == "decontamination"][
            ["path", "row", "source_id", "detail"]
        ].to_dict("records")

    def find_twins(self, frame: pd.DataFrame) -> None:
        """The kept document each shown duplicate duplicates: the same text hash (exact), the same cluster (near).
        Only the shown examples' twins are looked for, so memory does not grow with the corpus."""
        hashes = {
            ex["text_hash"] for (fate, _), exs in self.examples.items() for ex in exs if fate == "exact_duplicate"
        }
        clusters = {
            ex["cluster"] for (fate, _), exs in self.examples.items() for ex in exs if fate == "near_duplicate"
        }
        kept = frame[(frame["fate"] == "kept") & (frame["text_hash"].isin(hashes) | frame["cluster"].isin(clusters))]
        for text_hash, cluster, doc in zip(kept["text_hash"], kept["cluster"], _ids(kept)):
            if text_hash in hashes:
                self.twins.setdefault(("exact_duplicate", text_hash), doc)
            if cluster in clusters:
                self.twins.setdefault(("near_duplicate", cluster), doc)


def _ids(frame: pd.DataFrame) -> list[str]:
    return [
        f"{p}#{r}" + (f" (id {s})" if s else "") for p, r, s in zip(frame["path"], frame["row"], frame["source_id"])
    ]


def collect(recipe: CurateArguments) -> tuple[Totals, dict]:
    """Totals and histograms, reading the ledger task by task, twice: value ranges, examples and counts first,
    histograms and the examples' kept twins second."""
    ledger = Path(recipe.work_dir) / "ledger"
    totals = Totals()
    fields = ["chars", *[c for c in QUALITY_BOUNDS], *MEASURES]
    ranges = {f: [math.inf, -math.inf] for f in fields}
    rank_files = _ranks(ledger)
    for rank_file in rank_files:
        frame = task_fates(ledger, rank_file)
        if frame.empty:
            continue
        totals.add(frame, recipe.examples_per_reason)
        for f in fields:
            column = frame[f].dropna() if f in frame else pd.Series(dtype=float)
            column = column[column > 0] if f in LOG_FIELDS else column
            if len(column):
                ranges[f] = [min(ranges[f][0], column.min()), max(ranges[f][1], column.max())]
    edges = {}
    for f, (low, high) in ranges.items():
        if math.isfinite(low):
            # Widened to the recipe's bounds, so that every dashed line falls inside its panel.
            for _, bound in _threshold_lines(recipe).get(f, []):
                low, high = min(low, bound), max(high, bound)
            if f in LOG_FIELDS:
                edges[f] = np.geomspace(low, high * 1.0001 if high > low else low * 2, BINS + 1)
            else:
                edges[f] = np.linspace(low, high if high > low else low + 1e-9, BINS + 1)
    histograms = {f: {"removed": np.zeros(BINS), "kept": np.zeros(BINS), "edges": e} for f, e in edges.items()}
    for rank_file in rank_files:
        frame = task_fates(ledger, rank_file)
        if frame.empty:
            continue
        totals.find_twins(frame)
        for f, hist in histograms.items():
            for side, rows in (("kept", frame[frame["fate"] == "kept"]), ("removed", frame[frame["fate"] != "kept"])):
                values = rows[f].dropna().to_numpy(dtype=float)
                hist[side] += np.histogram(np.clip(values, hist["edges"][0], hist["edges"][-1]), hist["edges"])[0]
    return totals, histograms


def _tokens(counts: np.ndarray, ratio: float) -> float:
    """Counted tokens plus the uncounted bytes at the group's tokens per byte."""
    docs, total_bytes, tokens, counted_bytes = counts
    return tokens + (total_bytes - counted_bytes) * ratio


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _output_rows(output_dir: str) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in Path(output_dir).rglob("*.parquet"))


def _input_rows(recipe: CurateArguments) -> int:
    files = (Path(recipe.work_dir) / "files.txt").read_text().split()
    return sum(pq.ParquetFile(Path(recipe.input_dir) / f).metadata.num_rows for f in files)


def summarize(recipe: CurateArguments, totals: Totals) -> dict:
    """The numbers of the report, after checking that every row is accounted for exactly once."""
    counted_tokens, counted_bytes = defaultdict(float), defaultdict(float)
    for (domain, language, _), counts in totals.groups.items():
        counted_tokens[domain, language] += counts[2]
        counted_bytes[domain, language] += counts[3]
    # Tokens per byte of each domain and language, from its tokenized documents.
    ratio = {key: counted_tokens[key] / counted_bytes[key] if counted_bytes[key] else 0.0 for key in counted_bytes}
    counted = recipe.token_sample_every > 0
    groups = sorted({(d, lang) for d, lang, _ in totals.groups})
    fates = [*REMOVAL_STEPS, "kept"]
    table = {}
    for domain, language in groups:
        r = ratio.get((domain, language), 0.0)
        per_fate = {fate: totals.groups.get((domain, language, fate), np.zeros(4)) for fate in fates}
        table[f"{domain}/{language}"] = {
            fate: {"documents": int(c[0]), "bytes": int(c[1]), "tokens": round(_tokens(c, r)) if counted else None}
            for fate, c in per_fate.items()
        }
    input_rows = _input_rows(recipe)
    ledger_rows = sum(int(c[0]) for c in totals.groups.values())
    kept = sum(v["kept"]["documents"] for v in table.values())
    output_rows = _output_rows(recipe.output_dir)
    if ledger_rows != input_rows:
        raise CountMismatch(f"the input files hold {input_rows} rows, the ledger {ledger_rows}")
    if kept != output_rows:
        raise CountMismatch(f"the ledger keeps {kept} rows, the curated copy holds {output_rows}")
    reasons = []
    for (fate, reason), c in sorted(totals.reasons.items(), key=lambda kv: (fates.index(kv[0][0]), -kv[1][0])):
        if fate != "kept":
            reasons.append({"step": fate, "reason": reason, "documents": int(c[0]), "bytes": int(c[1])})
    return {
        "steps": applied_steps(recipe),
        "input_rows": input_rows,
        "kept": kept,
        "output_rows": output_rows,
        "groups": table,
        "reasons": reasons,
        "token_sample_every": recipe.token_sample_every,
    }


def _funnel(summary: dict) -> list[dict]:
    """Documents and tokens entering and leaving each step, over all groups."""
    remaining_docs = summary["input_rows"]
    remaining_tokens = sum(sum((f["tokens"] or 0) for f in g.values()) for g in summary["groups"].values())
    rows = []
    for step in summary["steps"]:
        docs = sum(g[step]["documents"] for g in summary["groups"].values())
        tokens = sum(g[step]["tokens"] or 0 for g in summary["groups"].values())
        rows.append(
            {
                "step": step,
                "in_docs": remaining_docs,
                "removed_docs": docs,
                "in_tokens": remaining_tokens,
                "removed_tokens": tokens,
            }
        )
        remaining_docs -= docs
        remaining_tokens -= tokens
    return rows


def _plot_histograms(
    histograms: dict, fields: list[str], bounds: dict[str, list[tuple[str, float]]], path: Path, title: str
) -> bool:
    present = [f for f in fields if f in histograms]
    if not present:
        return False
    cols = min(3, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, f in zip(axes.flat, present):
        hist = histograms[f]
        edges = hist["edges"]
        # Stacked: removed on top of kept. One artist per series (stairs), not one per bin (bar): much faster.
        ax.stairs(hist["kept"] + hist["removed"], edges, fill=True, color="tab:orange", label="removed (any step)")
        ax.stairs(hist["kept"], edges, fill=True, color="tab:blue", label="kept")
        if f in LOG_FIELDS:
            ax.set_xscale("log")
            # Plain numbers: the default log labels are mathtext, whose fonts are often missing (a warning each).
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        for label, value in bounds.get(f, []):
            ax.axvline(value, color="red", linestyle="--", linewidth=1.2)
            ax.annotate(
                label, (value, ax.get_ylim()[1] * 0.9), color="red", fontsize=8, rotation=90, ha="right", va="top"
            )
        ax.set_title(f, fontsize=10)
        ax.set_ylabel("documents")
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_funnel_and_mix(summary: dict, path: Path) -> None:
    funnel = _funnel(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    labels = ["input"] + [STEP_TITLES[r["step"]] for r in funnel]
    docs = [summary["input_rows"]] + [r["in_docs"] - r["removed_docs"] for r in funnel]
    left.bar(range(len(labels)), docs, color="tab:blue")
    left.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("documents left")
    left.set_title("documents after each step")
    languages = sorted({key.split("/")[1] for key in summary["groups"]})
    measure = "tokens" if summary["token_sample_every"] else "bytes"
    before = [
        sum(sum(f[measure] or 0 for f in g.values()) for k, g in summary["groups"].items() if k.endswith("/" + lang))
        for lang in languages
    ]
    after = [
        sum(g["kept"][measure] or 0 for k, g in summary["groups"].items() if k.endswith("/" + lang))
        for lang in languages
    ]
    bottom_before = bottom_after = 0.0
    for lang, b, a in zip(languages, before, after):
        b_share, a_share = b / max(sum(before), 1), a / max(sum(after), 1)
        right.bar([0, 1], [b_share, a_share], bottom=[bottom_before, bottom_after], label=lang)
        for x, share, bottom in ((0, b_share, bottom_before), (1, a_share, bottom_after)):
            if share > 0.04:
                right.text(x, bottom + share / 2, f"{lang} {share:.0%}", ha="center", va="center", fontsize=9)
        bottom_before += b_share
        bottom_after += a_share
    right.set_xticks([0, 1], ["input", "curated"])
    right.set_ylabel(f"share of {measure}")
    right.set_title(f"language mix ({measure})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + " …") if len(text) > limit else text


def write_report(recipe: CurateArguments) -> dict:
    """Check the counts, then write ``curation_report.md``, ``curation_summary.json``, ``decontaminated.csv``
    and the PNG figures into ``output_dir``; return the summary."""
    totals, histograms = collect(recipe)
    summary = summarize(recipe, totals)
    out = Path(recipe.output_dir)
    figures = out / "curation_figures"
    figures.mkdir(parents=True, exist_ok=True)
    tokens_word = "tokens" if recipe.token_sample_every else "bytes"
    note_tokens = {
        1: "Tokens are counted with the PT tokenizer on every document.",
        0: "Tokens were not counted (token_sample_every: 0); sizes are in bytes of text.",
    }.get(
        recipe.token_sample_every,
        f"Tokens are counted with the PT tokenizer on every {recipe.token_sample_every}th document; the others "
        f"are estimated from their bytes at their domain and language's tokens per byte.",
    )
    lines = [
        f"# Curation report: {recipe.kind} data",
        "",
        f"Input `{recipe.input_dir}` ({summary['input_rows']:,} rows) -> curated copy `{recipe.output_dir}` "
        f"({summary['kept']:,} rows, {summary['kept'] / max(summary['input_rows'], 1):.1%}). "
        f"Each input row is one {DOCUMENT_NAMES[recipe.kind]}. Every row is kept or removed by exactly one step, "
        f"the first that removed it, for the reason listed: the counts below add up to the input. {note_tokens}",
        "",
        "## Headline",
        "",
    ]
    funnel = _funnel(summary)
    rows = []
    for r in funnel:
        share = r["removed_tokens"] / r["in_tokens"] if r["in_tokens"] else 0.0
        rows.append(
            [
                STEP_TITLES[r["step"]],
                _fmt(r["in_docs"]),
                _fmt(r["removed_docs"]),
                _fmt(r["in_docs"] - r["removed_docs"]),
                _fmt(r["in_tokens"] - r["removed_tokens"]),
                f"{share:.1%}",
            ]
        )
    lines += _md_table(
        ["step", "documents in", "removed", "documents out", f"{tokens_word} out", f"{tokens_word} removed"], rows
    )
    lines += ["", "![documents after each step, and the language mix](curation_figures/funnel_and_mix.png)", ""]
    lines += [
        "## Per domain and language",
        "",
        f"Documents (and {tokens_word}) entering the curation and left after each step.",
        "",
    ]
    header = ["domain/language", "input"] + [f"after {STEP_TITLES[s]}" for s in summary["steps"]]
    rows = []
    for group, fates in summary["groups"].items():
        left_docs = sum(f["documents"] for f in fates.values())
        left_tokens = sum(f[tokens_word] or 0 for f in fates.values())
        cells = [group, f"{left_docs:,} ({_fmt(left_tokens)})"]
        for step in summary["steps"]:
            left_docs -= fates[step]["documents"]
            left_tokens -= fates[step][tokens_word] or 0
            cells.append(f"{left_docs:,} ({_fmt(left_tokens)})")
        rows.append(cells)
    lines += _md_table(header, rows)
    lines += ["", "## Removal reasons", ""]
    reasons = [
        [STEP_TITLES[r["step"]], r["reason"], _fmt(r["documents"]), _fmt(r["bytes"])] for r in summary["reasons"]
    ]
    lines += _md_table(["step", "reason", "documents", "bytes"], reasons) if reasons else ["Nothing was removed."]
    bounds = _threshold_lines(recipe)
    quality = [c for c in QUALITY_BOUNDS if c in histograms]
    if _plot_histograms(
        histograms,
        ["chars", *quality],
        bounds,
        figures / "quality_columns.png",
        "Length in characters"
        + (" and IndustryCorpus2's quality columns" if quality else "")
        + " (dashed: the recipe's bounds)",
    ):
        lines += ["", "## Distributions", "", "![length and quality columns](curation_figures/quality_columns.png)"]
    if _plot_histograms(
        histograms,
        MEASURES,
        bounds,
        figures / "heuristics.png",
        "Text heuristics (dashed: the recipe's bounds; Chinese n-grams are longer, see the recipe)",
    ):
        lines += ["", "![text heuristics](curation_figures/heuristics.png)"]
    _plot_funnel_and_mix(summary, figures / "funnel_and_mix.png")
    lines += [
        "",
        "## Examples",
        "",
        f"The first {recipe.examples_per_reason} documents of each reason in each task, cut to "
        f"{recipe.example_chars} characters.",
        "",
    ]
    for (fate, reason), examples in sorted(totals.examples.items(), key=lambda kv: REMOVAL_STEPS.index(kv[0][0])):
        lines += [f"### {STEP_TITLES[fate]}: {reason}", ""]
        for ex in examples:
            where = f"{ex['path']}#{ex['row']}" + (f" (id {ex['source_id']})" if ex["source_id"] else "")
            extra = f" — {ex['detail']}" if ex.get("detail") else ""
            twin = totals.twins.get((fate, ex["text_hash"] if fate == "exact_duplicate" else ex["cluster"]))
            if twin:
                extra += f" — same text as kept {twin}" if fate == "exact_duplicate" else f" — cluster kept {twin}"
            lines += [f"- `{where}`{extra}", f"  > {_clip(ex['example'], recipe.example_chars)}"]
        lines.append("")
    if recipe.decontaminate:
        pd.DataFrame(totals.decontaminated, columns=["path", "row", "source_id", "detail"]).to_csv(
            out / "decontaminated.csv", index=False
        )
        index = json.loads((Path(recipe.work_dir) / "decont" / "summary.json").read_text())
        lines += [
            "## Benchmark overlap",
            "",
            f"{len(totals.decontaminated)} documents shared a {recipe.decont_ngram}-word n-gram with one of the "
            f"{index['questions']:,} benchmark items indexed from `{recipe.bench_dir}` (their evaluated splits; "
            f"{index['too_short']:,} items shorter than {recipe.decont_ngram} words could not be) and were removed; "
            f"all are listed in `decontaminated.csv`.",
            "",
        ]
        lines += _md_table(
            ["document", "benchmark item and shared text"],
            [[f"`{d['path']}#{d['row']}`", _clip(d["detail"], 200)] for d in totals.decontaminated[:50]],
        )
    (out / "curation_report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "curation_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    logger.info(
        "Curation report: %s (%d of %d rows kept)", out / "curation_report.md", summary["kept"], summary["input_rows"]
    )
    return summary


def _threshold_lines(recipe: CurateArguments) -> dict[str, list[tuple[str, float]]]:
    lines: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for column, (side, bound) in recipe.quality_bounds().items():
        lines[column].append((f"{side} {bound:g}", bound))
    if recipe.kind == "pt":
        lines["words"] += [
            (f"min {recipe.min_words}", recipe.min_words),
            (f"max {recipe.max_words}", recipe.max_words),
        ]
        lines["symbol_ratio"].append((f"max {recipe.max_symbol_ratio:g}", recipe.max_symbol_ratio))
        lines["duplicate_line_fraction"].append(
            (f"max {recipe.max_duplicate_line_fraction:g}", recipe.max_duplicate_line_fraction)
        )
        if recipe.top_ngram_limits:
            n, limit = recipe.top_ngram_sizes[0], recipe.top_ngram_limits[0]
            lines["top_ngram_fraction"].append((f"max {limit:g} (n={n})", limit))
        if recipe.duplicate_ngram_limits:
            n, limit = recipe.duplicate_ngram_sizes[0], recipe.duplicate_ngram_limits[0]
            lines["duplicated_ngram_fraction"].append((f"max {limit:g} (n={n})", limit))
    return lines


def report_step(data, rank: int = 0, world_size: int = 1, recipe: CurateArguments | None = None):
    """The last pipeline stage (one task): the report, run by the same executor as the rest."""
    write_report(recipe)
