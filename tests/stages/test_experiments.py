"""Several runs in one figure, and upstream's experiments as commands: each study's wiring at the `ci` scale
(seconds per variant), from training its variants to a report that says what can be concluded."""

from __future__ import annotations

import json
import re

import pytest

from experiments.__main__ import main as experiment_main
from tests.helpers import ROOT
from tools.plot import main as plotting_main
from utils.plotting import plot_runs


def fake_run(folder, losses: list[float], block_size: int = 64, batch: int = 8):
    folder.mkdir(parents=True)
    history = [{"loss": v, "step": 10 * (i + 1)} for i, v in enumerate(losses)]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    info = {"stage": "pt", "global_batch_size": batch, "arguments": {"PTArguments": {"block_size": block_size}}}
    (folder / "run_info.json").write_text(json.dumps(info))
    return folder


def test_several_runs_in_one_figure_one_line_each(tmp_path):
    small = fake_run(tmp_path / "a" / "pt", [5.0, 4.0, 3.5])
    large = fake_run(tmp_path / "b" / "pt", [5.0, 3.0], batch=16)
    out, ax = plot_runs([small, large], x="tokens", output=tmp_path / "fig.png")
    assert out.stat().st_size > 1000 and len(ax.lines) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a/pt", "b/pt"]  # same folder names: parents too
    assert list(ax.lines[0].get_xdata()) == [10 * 8 * 64, 20 * 8 * 64, 30 * 8 * 64]  # steps x tokens per step
    assert list(ax.lines[1].get_ydata()) == [5.0, 3.0] and ax.get_xscale() == "log"
    plotting_main([str(small), str(large), "--output", str(tmp_path / "cli.png")])
    assert (tmp_path / "cli.png").stat().st_size > 1000
    bare = tmp_path / "c"  # a run without run_info.json: its tokens per step are unknown
    bare.mkdir()
    (bare / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 1.0, "step": 1}]}))
    with pytest.raises(
        ValueError,
        match=r"c/run_info\.json: missing or unreadable, so the tokens per step of .*/c are unknown",
    ):
        plot_runs([small, bare], x="tokens", output=tmp_path / "x.png")


def table_rows(report: str) -> list[list[str]]:
    lines = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize(
    "name, variants, figure",
    [
        ("packing", ["isolated", "cross_document", "one_per_row"], True),
        ("bilingual", ["chinese", "chinese+english"], True),
        ("scaling", ["0.25", "0.5", "1.0"], True),
    ],
)
def test_pt_experiments_run_end_to_end(tmp_path, monkeypatch, name, variants, figure):
    monkeypatch.chdir(ROOT)
    argv = [name, "--scale", "ci", "--output_root", str(tmp_path), "--work_dir", str(tmp_path / "work")]
    report = experiment_main(argv).read_text(encoding="utf-8")  # nothing is written into the checkout
    rows = table_rows(report)
    assert [r[0] for r in rows] == variants
    assert all(re.fullmatch(r"\d+\.\d{3}", cell) for row in rows for cell in row[1:])  # measured, one seed
    assert (tmp_path / name / "curves.png").is_file() == figure and "## What to conclude" in report
    assert "```bash" in report.split("## At full size, on GPUs")[1]
    eval_dirs = sorted(p.name for p in (tmp_path / name / "eval").iterdir())
    assert eval_dirs == ["generations.jsonl", "metrics.json", "report.md"]


@pytest.mark.parametrize(
    "name, variants", [("sft_epochs", ["epoch 1", "epoch 2"]), ("dpo_lr", ["1e-5", "1e-4", "1e-3"])]
)
def test_dpo_experiments_run_end_to_end(tmp_path, monkeypatch, name, variants):
    monkeypatch.chdir(ROOT)
    argv = [name, "--scale", "ci", "--output_root", str(tmp_path), "--work_dir", str(tmp_path / "work")]
    report = experiment_main(argv).read_text(encoding="utf-8")  # nothing is written into the checkout
    rows = table_rows(report)
    assert [r[0] for r in rows] == variants
    runs = sorted(p for p in (tmp_path / name).iterdir() if (p / "preference_report.json").is_file())
    assert len(runs) == len(variants)  # one seed at this scale
    for row, run in zip(
        rows, sorted(runs, key=lambda p: [v.replace(" ", "") in p.name for v in variants].index(True))
    ):
        facts = json.loads((run / "preference_report.json").read_text())
        assert row[2] == f"{facts['dpo_prefers_chosen']:.3f}" and facts["heldout_pairs"] == 12
        assert (facts["dpo_prefers_chosen"] * 12).is_integer()  # a share of the 12 held-back pairs
    sft_record = json.loads((tmp_path / name / "base" / "sft" / "run_info.json").read_text())["epoch_checkpoints"]
    assert sorted(sft_record) == ["1", "2"]
