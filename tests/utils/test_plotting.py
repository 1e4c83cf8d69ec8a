"""Curves from what runs leave on disk: held-out curves beside training ones, reference curves at equal tokens or
pairs, and every unreadable input named and skipped, never a traceback."""

from __future__ import annotations

import json
import logging

import pytest

from tools.plot import main as plot_main
from utils.plot_runs import plot_runs
from utils.plotting import PlotInputError, find_log_history, panel_curves, seen_per_step, series
from utils.reference import ReferenceError, load_reference


def make_run(folder, stage="pt", history=None, info=None):
    folder.mkdir(parents=True, exist_ok=True)
    history = history or [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 11)]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    info = (
        {"stage": stage, "global_batch_size": 4, "arguments": {"PTArguments": {"block_size": 64}}}
        if info is None
        else info
    )
    (folder / "run_info.json").write_text(json.dumps(info))
    return folder


def test_upstreams_pt_log_is_the_reference_at_equal_tokens():
    """Upstream logged step 100 of 1,152 x 1,024 tokens at loss 10.3924: a run that has seen as many tokens is
    compared with that figure, between logged points linearly, and not at all outside them."""
    curve = load_reference("upstream_pt")
    assert curve.unit == "tokens" and "upstream mini_qwen's logs" in curve.label
    assert curve.loss_at(100 * 1152 * 1024) == pytest.approx(10.3924)
    between = curve.loss_at(90 * 1152 * 1024)
    assert between == pytest.approx((10.6584 + 10.3924) / 2)
    assert curve.loss_at(1000) is None and curve.loss_at(1e12) is None
    assert load_reference("upstream_dpo").unit == "pairs"


def test_a_reference_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(ReferenceError, match="neither a shipped one"):
        load_reference("upstream_sft")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,2\n")
    with pytest.raises(ReferenceError, match=r"bad\.csv: needs a 'loss' column and one of \('tokens', 'pairs'\)"):
        load_reference(str(bad))
    bad.write_text("tokens,loss\n1,2\n2,x\n")
    with pytest.raises(ReferenceError, match=r"bad\.csv, line 3"):
        load_reference(str(bad))


def test_held_out_curves_share_their_training_curves_panel(tmp_path):
    history = [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.5},
        {"step": 2, "eval_loss": 2.7},
        {"step": 2, "rewards/accuracies": 0.6},
        {"step": 2, "eval_rewards/accuracies": 0.5},
    ]
    panels = panel_curves(history)
    assert panels["loss"] == {"loss": [(1, 3.0), (2, 2.5)], "eval_loss": [(2, 2.7)]}
    assert set(panels["rewards/accuracies"]) == {"rewards/accuracies", "eval_rewards/accuracies"}


def test_unreadable_state_and_odd_folders_are_skipped_and_named(tmp_path, caplog):
    run = make_run(tmp_path / "run")
    (run / "trainer_state.json").write_text('{"log_history": [{"step": 1, "lo')  # truncated by a crash
    make_run(run / "checkpoint-5", history=[{"step": 5, "loss": 1.5}])
    (run / "checkpoint-100-backup").mkdir()
    caplog.set_level(logging.WARNING)
    assert find_log_history(run) == [{"step": 5, "loss": 1.5}]
    assert (
        "checkpoint-100-backup" in caplog.text and f"{run / 'trainer_state.json'} is not readable JSON" in caplog.text
    )
    (run / "checkpoint-5" / "trainer_state.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="has no log_history list"):
        find_log_history(run)


def test_entries_without_a_step_are_counted_not_fatal(caplog):
    caplog.set_level(logging.WARNING)
    points = series(
        [{"loss": 1.0}, {"step": "3", "loss": 2.0}, {"step": 4, "loss": 0.5}, {"step": 5, "loss": "x"}],
        "loss",
        "runs/x/trainer_state.json",
    )
    assert points == [(4, 0.5)]
    assert "runs/x/trainer_state.json: 2 entries with loss but no step left out" in caplog.text


def test_runs_against_tokens_say_which_run_has_no_token_count(tmp_path):
    """A DPO run counts pairs, a run_info.json may lack block_size or be missing: each is named with what to do."""
    pt = make_run(tmp_path / "pt")
    assert seen_per_step(pt) == 4 * 64
    dpo = make_run(tmp_path / "dpo", stage="dpo", info={"stage": "dpo", "global_batch_size": 8, "arguments": {}})
    with pytest.raises(PlotInputError, match=r"dpo: a dpo run, counted in pairs .* plot it against --x steps"):
        plot_runs([pt, dpo], x="tokens", output=tmp_path / "x.png")
    assert seen_per_step(dpo, "pairs") == 8
    no_block = make_run(tmp_path / "old", info={"stage": "pt", "global_batch_size": 4, "arguments": {}})
    with pytest.raises(PlotInputError, match=r"old/run_info.json: no block_size"):
        seen_per_step(no_block)
    (no_block / "run_info.json").unlink()
    with pytest.raises(SystemExit, match=r"run_info.json: missing or unreadable"):
        plot_main([str(pt), str(no_block), "--x", "tokens", "--output", str(tmp_path / "y.png")])


def test_the_plot_command_draws_runs_and_a_reference(tmp_path, capsys):
    pt = make_run(tmp_path / "pt")
    plot_main([str(pt), "--reference", "upstream_pt", "--output", str(tmp_path / "one.png")])
    assert (tmp_path / "one.png").stat().st_size > 1000
    out, ax = plot_runs(
        [pt, make_run(tmp_path / "pt2")], x="tokens", output=tmp_path / "two.png", references=["upstream_pt"]
    )
    assert [line.get_label() for line in ax.get_lines()][-1].startswith("upstream_pt")
    with pytest.raises(SystemExit, match="reference upstream_dpo counts pairs"):
        plot_main([str(pt), str(pt), "--x", "tokens", "--reference", "upstream_dpo", "--output", str(out)])
