"""One measurement of a GPU machine: what the training engine holds for each full recipe, and how fast and how big
every stage is at the 1B shape. ``bash run.sh gpu-check`` runs it (through ``benchmarks/gpu_check.sh``).

    python -m benchmarks.gpu_check --output_dir gpu_check                 # on the GPU machine
    python -m benchmarks.gpu_check --output_dir /tmp/check --dry_run      # the same steps, tiny, on a CPU

Steps, each in its own time box, so that one slow or failing step costs only its own figures:

1. engine: for pt/sft/dpo_full.yaml, the precision and attention the recipe settles on here, the Accelerator's mixed
   precision and the dtype a layer computes in, during one optimizer step of a tiny model (``engine_probe.probe``);
2. speed: every stage at the 1B shape, seq 1024, upstream's path vs ours and each lever alone, side by side: step
   time, tokens/s, MFU, peak memory (``train_speed``; torch.compile only with ``--with_compile``: it can take
   minutes to compile);
3. memory: the T4 demo recipe's training step measured on this GPU beside its fake-tensor estimate. The estimate takes
   about a minute of CPU, so a machine with little time uses one computed beforehand (``--memory_estimate``, written
   by ``benchmarks/gpu_wheels.sh``).

Everything goes into ``<output_dir>/gpu_check.json``, and the table printed at the end into ``gpu_check.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import time
import traceback
from pathlib import Path

import torch

STAGES = ("pt", "sft", "dpo")
SPEED_CONFIGS = {
    "pt": ["baseline", "ours", "ours-fused_head", "ours+flex"],
    "sft": ["baseline", "ours", "ours+flex"],
    "dpo": ["baseline", "ours"],
}
# Seconds each step may take: at most 6 minutes in all with the start-up, on the machine this is sized for (one H100,
# where the steps take about 3 minutes together).
TIME_BOXES = {"engine": 75, "speed": 80, "memory": 45}


class TimeBox(Exception):
    """A step ran past its time box."""


@contextlib.contextmanager
def time_box(seconds: int):
    def expire(signum, frame):
        raise TimeBox(f"ran past its {seconds} s time box")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_step(name: str, seconds: int, fn) -> dict:
    """``{"seconds", "result"}`` or ``{"seconds", "error"}``: a failure is recorded, never raised."""
    start = time.perf_counter()
    try:
        with time_box(seconds):
            result = fn()
        return {"seconds": round(time.perf_counter() - start, 1), "result": result}
    except Exception as err:  # one step's failure must not cost the others' figures
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        print(f"[gpu_check] {name} failed: {detail}", flush=True)
        return {"seconds": round(time.perf_counter() - start, 1), "error": detail[-500:]}


def engine(output_dir: Path, dry_run: bool) -> dict:
    from benchmarks.engine_probe import faked, probe

    facts = {}
    for stage in STAGES:
        # A dry run on a CPU decides as an H100 would, and trains on the CPU (the engine side is faked there only).
        with faked("h100" if dry_run else "real") as flags:
            facts[stage] = probe(stage, f"configs/{stage}_full.yaml", str(output_dir / f"engine_{stage}"), flags)
    return facts


def speed(stage: str, dry_run: bool) -> list[dict]:
    from benchmarks import train_speed

    shape = (
        ["--shape", "tiny", "--seq_len", "64", "--batch_size", "2", "--steps", "1", "--warmup", "0"]
        if dry_run
        else ["--shape", "1b", "--seq_len", "1024", "--batch_size", "8", "--steps", "5", "--warmup", "2"]
    )
    configs = [c for c in SPEED_CONFIGS[stage] if not (dry_run and c == "ours+flex")]
    with contextlib.redirect_stdout(io.StringIO()):  # its own table; ours is printed at the end
        return train_speed.main(["--stage", stage, *shape, "--configs", *configs])


def memory(estimate_file: str | None, dry_run: bool) -> dict:
    from benchmarks.memory import Setup, estimate, measure, recipe_setup, shape_of

    if dry_run:
        setup = Setup("pt", shape_of("tiny"), 64, 2, "fp32", True, "adamw_torch", accumulation=2)
    else:
        # The T4 recipe with plain AdamW: bitsandbytes may be missing here (its 8-bit state is 4.7 GiB smaller).
        setup = recipe_setup("pt", "configs/pt_t4_demo.yaml", "1b")
        setup.optim = "adamw_torch"
    if estimate_file:
        estimated = json.loads(Path(estimate_file).read_text(encoding="utf-8"))["peak"]
    else:
        estimated = estimate(setup)["peak"]
    measured = measure(setup) if torch.cuda.is_available() else None
    return {
        "recipe": setup.source,
        "estimated_gib": estimated,
        "measured_gib": measured,
        "note": None if measured is not None else "no CUDA GPU: not measured",
    }


def render(report: dict) -> str:
    lines = [f"GPU check: {report['device']} ({'dry run, tiny shapes' if report['dry_run'] else '1B shape'})", ""]
    engine_facts = report["engine"].get("result") or {}
    lines.append("| stage | precision | engine mixed precision | forward dtype | attention |")
    lines.append("|---|---|---|---|---|")
    for stage in STAGES:
        f = engine_facts.get(stage)
        lines.append(
            f"| {stage} | "
            + (
                " | ".join(str(f[k]) for k in ("precision", "mixed_precision", "forward_dtype", "attention"))
                if f
                else report["engine"].get("error", "not run")
            )
            + " |"
        )
    lines += ["", "| stage | config | attention | tokens/s | MFU % | peak memory GiB |", "|---|---|---|---|---|---|"]
    for stage in STAGES:
        step = report["speed"][stage]
        for row in step.get("result") or [{"config": "-", "error": step.get("error", "not run")}]:
            if "error" in row:
                lines.append(f"| {stage} | {row['config']} | failed: {row['error'][:80]} | | | |")
            else:
                lines.append(
                    f"| {stage} | {row['config']} | {row['attention']} | {row['tokens_per_s']:,.0f} | "
                    f"{100 * row['mfu']:.1f} | {row['peak_mem_gb']:.2f} |"
                )
    mem = report["memory"].get("result")
    lines.append("")
    if mem:
        measured = f"{mem['measured_gib']:.2f} GiB measured" if mem["measured_gib"] is not None else mem["note"]
        lines.append(f"Memory, {mem['recipe']}: {mem['estimated_gib']:.2f} GiB estimated (fake tensors), {measured}")
    else:
        lines.append(f"Memory: failed: {report['memory'].get('error')}")
    lines.append("Seconds per step: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="gpu_check", help="Where gpu_check.json and gpu_check.txt go.")
    parser.add_argument("--dry_run", action="store_true", help="Tiny shapes on whatever device there is (seconds).")
    parser.add_argument("--memory_estimate", default=None, help="A JSON with the T4 recipe's estimated 'peak' (GiB).")
    parser.add_argument("--with_compile", action="store_true", help="Also measure ours+compile for PT.")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.with_compile:
        SPEED_CONFIGS["pt"].append("ours+compile")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    report = {"device": device, "dry_run": args.dry_run, "torch": torch.__version__}
    report["engine"] = run_step("engine", TIME_BOXES["engine"], lambda: engine(out, args.dry_run))
    report["speed"] = {
        s: run_step(f"speed {s}", TIME_BOXES["speed"], lambda s=s: speed(s, args.dry_run)) for s in STAGES
    }
    report["memory"] = run_step("memory", TIME_BOXES["memory"], lambda: memory(args.memory_estimate, args.dry_run))
    report["seconds"] = {
        "engine": report["engine"]["seconds"],
        "memory": report["memory"]["seconds"],
        **{f"speed {s}": report["speed"][s]["seconds"] for s in STAGES},
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    table = render(report)
    (out / "gpu_check.txt").write_text(table, encoding="utf-8")
    print(table, flush=True)
    return report


if __name__ == "__main__":
    main()
