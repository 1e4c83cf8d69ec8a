"""Several runs in one figure (utils.plot_runs): one line per run, or one per group of seeds with their band."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools.plot import main as plotting_main
from utils.plot_runs import plot_groups, plot_runs
from utils.plotting import PlotInputError


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
    assert len(ax.collections) == 0  # single runs: no band
    plotting_main([str(small), str(large), "--output", str(tmp_path / "cli.png")])
    assert (tmp_path / "cli.png").stat().st_size > 1000
    bare = tmp_path / "c"  # a run without run_info.json: its tokens per step are unknown
    bare.mkdir()
    (bare / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 1.0, "step": 1}]}))
    with pytest.raises(PlotInputError, match=r"c/run_info\.json: missing or unreadable, so the tokens per step"):
        plot_runs([small, bare], x="tokens", output=tmp_path / "x.png")


def test_every_seed_is_drawn_mean_line_and_range_band(tmp_path):
    seeds = {
        "quarter": [[6.0, 5.0, 4.0], [6.2, 5.4, 4.6], [5.8, 4.9, 3.7]],
        "all": [[6.0, 4.5, 3.0, 2.5], [6.1, 4.4, 3.2, 2.9]],
    }
    groups = {
        name: [fake_run(tmp_path / f"{name}-s{i}", losses) for i, losses in enumerate(runs)]
        for name, runs in seeds.items()
    }
    out, ax = plot_groups(groups, x="steps", output=tmp_path / "groups.png")
    assert out.stat().st_size > 1000 and len(ax.lines) == 2 and len(ax.collections) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["quarter (mean of 3 seeds, band: min-max)", "all (mean of 2 seeds, band: min-max)"]
    for line, band, runs in zip(ax.lines, ax.collections, seeds.values()):
        values = np.array(runs)
        assert np.allclose(line.get_ydata(), values.mean(0))
        corners = band.get_paths()[0].vertices
        assert np.isclose(corners[:, 1].min(), values.min()) and np.isclose(corners[:, 1].max(), values.max())
    assert list(ax.lines[1].get_xdata()) == [10, 20, 30, 40]


def test_seeds_that_logged_different_steps_share_only_common_steps(tmp_path):
    short = fake_run(tmp_path / "s1", [3.0, 2.0])
    long = fake_run(tmp_path / "s2", [5.0, 4.0, 1.0])
    _, ax = plot_groups({"variant": [short, long]}, output=tmp_path / "g.png")
    assert list(ax.lines[0].get_xdata()) == [10, 20] and list(ax.lines[0].get_ydata()) == [4.0, 3.0]
