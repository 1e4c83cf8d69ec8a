"""What a run needs, before anything is downloaded or trained: data, steps, disk, GPU memory and time, per stage.

    bash run.sh plan all --num_gpus 6 --gpu h800          # upstream's machine, the full recipes
    bash run.sh plan pt --num_gpus 8 --gpu h100 --per_device_train_batch_size 16      # recipe values as flags
    bash run.sh plan all --gpu t4 --recipes t4            # the demo's 1B shape on one 16 GB card
    bash run.sh plan grpo --num_gpus 6 --gpu h800         # the optional GRPO stage (not part of "all")

Data: files and bytes from the folders' MANIFEST.json after ``prepare.sh``, else from the data configs
(``configs/data/*.yaml``: upstream's published sizes); tokens, conversations or pairs likewise (a local folder such
as mini_data is counted, its tokens estimated from a sample). Steps and the optimizer batch follow the recipe.
Disk: downloads, token caches, and each checkpoint (fp32 weights + optimizer state) times how many are kept.
GPU memory per device: the fake-tensor estimate of ``benchmarks/memory.py`` for the recipe's micro-batch, with ZeRO-2
sharding the gradients and optimizer state over the GPUs, plus 1.5 GiB of CUDA context. Time: training FLOPs
(6N per token plus attention, as ``benchmarks/train_speed.py`` counts them for MFU) / (GPUs x peak x MFU), at
upstream's measured 20% MFU and at 40%, next to what upstream measured on its own machine.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from utils import REPO_ROOT
from utils.train.args import read_recipe

# name -> (what it is, dense bf16 peak TFLOP/s (fp16 on T4/V100), memory in GiB a training run can use)
GPUS = {
    "h100": ("H100 80GB", 989.0, 79.0),
    "h800": ("H800 80GB", 989.0, 79.0),
    "h200": ("H200 141GB", 989.0, 139.0),
    "a100": ("A100 80GB", 312.0, 79.0),
    "a100-40": ("A100 40GB", 312.0, 39.0),
    "l40s": ("L40S 48GB", 362.0, 44.0),
    "4090": ("RTX 4090 24GB", 165.0, 23.0),
    "3090": ("RTX 3090 24GB", 71.0, 23.0),
    "a10": ("A10 24GB", 125.0, 22.0),
    "v100": ("V100 32GB", 125.0, 31.0),
    "t4": ("T4 16GB", 65.0, 14.6),
}
MFU = {"upstream's 20%": 0.20, "40%": 0.40}
UPSTREAM_HOURS = {
    "pt": "24.7 h (6 x H800)",
    "sft": "43 h (6 x H800)",
    "dpo": "about 1 h (6 x H800)",
    "grpo": "- (upstream has no GRPO)",
}
CUDA_CONTEXT_GIB = 1.5
DATA_CONFIGS = {
    "pt": REPO_ROOT / "configs" / "data" / "industrycorpus2.yaml",
    "sft": REPO_ROOT / "configs" / "data" / "infinity_instruct.yaml",
    "dpo": REPO_ROOT / "configs" / "data" / "infinity_preference.yaml",
    "grpo": REPO_ROOT / "configs" / "data" / "grpo.yaml",
}
FULL_DATA_DIRS = {"pt": "data/pt", "sft": "data/sft", "dpo": "data/dpo", "grpo": "data/grpo"}
ADAM_BYTES = {"adamw_bnb_8bit": 2, "adamw_torch": 8, "adamw_torch_fused": 8}  # optimizer state per parameter


@dataclass
class StagePlan:
    stage: str
    recipe: str
    data: dict
    steps: int
    global_batch: int
    batch: str
    per_step: str
    disk: dict
    memory: dict
    time: dict
    notes: list = field(default_factory=list)


def parse_size(text: str) -> int:
    """``"5.7G"`` -> bytes, in the binary units ``du -h`` prints."""
    match = re.fullmatch(r"([\d.]+)\s*([KMGT]?)", str(text).strip())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


def human(n: float, unit: str = "B") -> str:
    """Bytes in decimal units (``12.0 GB``)."""
    for prefix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or prefix == "P":
            return f"{n:,.0f} {unit}" if not prefix else f"{n:,.1f} {prefix}{unit}"
        n /= 1000
    return f"{n} {unit}"


def duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min" if hours * 60 >= 1 else "under a minute"


def count(n: float, unit: str) -> str:
    """A count in words a reader says aloud (``15.95B tokens``, ``8.91M rows``)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:,.2f}{suffix} {unit}"
    return f"{n:,.0f} {unit}"


def manifest_bytes(folder: Path) -> tuple[int, int] | None:
    """(files, bytes) of every MANIFEST.json below ``folder`` (what prepare.sh downloaded), or None."""
    manifests = list(folder.rglob("MANIFEST.json")) if folder.is_dir() else []
    if not manifests:
        return None
    data = [json.loads(m.read_text(encoding="utf-8")) for m in manifests]
    return sum(len(d["files"]) for d in data), sum(d["bytes"] for d in data)


def local_rows(folder: Path) -> tuple[int, int, int]:
    """(files, rows, bytes on disk) of the parquet files below a local folder."""
    files = sorted(folder.rglob("*.parquet"))
    return len(files), sum(pq.read_metadata(f).num_rows for f in files), sum(f.stat().st_size for f in files)


def data_figures(stage: str, recipe: dict) -> dict:
    """Rows (documents, conversations or pairs), tokens where known, files and bytes to download, and where each
    figure comes from."""
    data_dir = Path(recipe.get("data_dir", FULL_DATA_DIRS[stage]))
    folder = data_dir if data_dir.is_absolute() else REPO_ROOT / data_dir
    config = yaml.safe_load(DATA_CONFIGS[stage].read_text(encoding="utf-8"))
    downloaded = manifest_bytes(folder)
    full = str(data_dir).rstrip("/") == FULL_DATA_DIRS[stage]
    if full or downloaded:
        if stage == "pt":
            sizes = {(lang, d): parse_size(s) for lang, ds in config["folder_sizes"].items() for d, s in ds.items()}
            domains = recipe.get("domains") or config["domains"]
            published = sum(v for (_, d), v in sizes.items() if d in domains)
            tokens = config["tokens"] * published / sum(sizes.values())
            figures = {"tokens": tokens, "bytes": published, "files": None, "source": "upstream's published sizes"}
        else:
            parts = config["subsets" if stage == "sft" else "splits"].values()
            figures = {
                "rows": sum(p["rows"] for p in parts),
                "bytes": sum(parse_size(p["size"]) for p in parts),
                "files": None,
                "source": "the dataset's published sizes",
            }
            if stage == "sft":
                figures["tokens"] = figures["rows"] * config["tokens_per_conversation"]
        if downloaded:
            figures.update(files=downloaded[0], bytes=downloaded[1], source="MANIFEST.json of the download")
        figures["download"] = figures["bytes"] if not downloaded else 0
        return figures
    files, rows, size = local_rows(folder)
    if not files:
        raise SystemExit(f"{data_dir}: no parquet files, and not the full recipe's data folder: nothing to plan from")
    figures = {"files": files, "rows": rows, "bytes": size, "download": 0, "source": f"counted in {data_dir}"}
    if stage == "pt":
        figures["tokens"] = pt_tokens_estimate(folder, recipe)
    elif stage == "sft":
        figures["tokens"] = rows * config["tokens_per_conversation"]
    return figures


def pt_tokens_estimate(folder: Path, recipe: dict) -> float:
    """Tokens of a local PT folder: its text bytes times the tokens per byte of a sample (the first 200 documents)."""
    from utils.data.parquet import find_parquet_files, read_rows
    from utils.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(recipe.get("tokenizer_name_or_path", "models/Qwen2.5-0.5B-Instruct"))
    texts = [r["text"] for _, _, r in read_rows(find_parquet_files(folder), ["text"]) if r and r.get("text")]
    sample = texts[:200]
    tokens = sum(len(ids) + 1 for ids in tokenizer(sample, add_special_tokens=False)["input_ids"])
    sample_bytes = sum(len(t.encode("utf-8")) for t in sample)
    return tokens / sample_bytes * sum(len(t.encode("utf-8")) for t in texts)


def shape_parameters(recipe: dict, stage: str) -> tuple[int, int, int]:
    """(parameters, layers, hidden) of the recipe's model: PT's shape, or the 1B shape SFT/DPO inherit from PT."""
    import torch

    from benchmarks.train_speed import SHAPES
    from utils.modeling import SHAPE_FIELDS, ModelShapeArguments, build_model, count_parameters

    if stage == "pt":
        keys = ("base_config", *SHAPE_FIELDS)
        shape = ModelShapeArguments(**{k: recipe[k] for k in keys if k in recipe})
    else:
        shape = ModelShapeArguments(**SHAPES["1b"])
    with torch.device("meta"):
        model = build_model(shape, attn_implementation="sdpa")
    return count_parameters(model), model.config.num_hidden_layers, model.config.hidden_size


def memory_per_device(stage: str, recipe_path: str, num_gpus: int) -> dict:
    """The fake-tensor estimate of the recipe's training step, the gradients and optimizer state sharded over
    ``num_gpus`` by ZeRO-2 (accelerate_config.yaml), plus the CUDA context."""
    from benchmarks.memory import estimate, recipe_setup

    row = estimate(recipe_setup(stage, recipe_path, "1b"))
    sharded = row["gradients"] + row["optimizer state"] + row["other"]
    per_device = row["peak"] - (1 - 1 / num_gpus) * sharded + CUDA_CONTEXT_GIB
    return {"estimate_gib": row["peak"], "per_device_gib": per_device, "sharded_gib": sharded}


def plan_stage(stage: str, recipe_path: str, overrides: dict, num_gpus: int, gpu: str, memory: bool) -> StagePlan:
    recipe = {**read_recipe(recipe_path), **overrides}
    data = data_figures(stage, recipe)
    params, layers, hidden = shape_parameters(recipe, stage)
    micro, accumulation = recipe["per_device_train_batch_size"], recipe.get("gradient_accumulation_steps", 1)
    global_batch = micro * accumulation * num_gpus
    epochs = recipe.get("num_train_epochs", 1)
    holdout = recipe.get("holdout", 0) or 0
    notes = []
    if stage == "pt":
        seq = recipe.get("block_size", 1024)
        examples = data["tokens"] * (1 - holdout) / seq
        unit, per_step_amount = "tokens", global_batch * seq
        computed = examples * seq * epochs
    elif stage == "sft":
        seq = recipe.get("max_length", 1024)
        config = yaml.safe_load(DATA_CONFIGS["sft"].read_text(encoding="utf-8"))
        per_row = 1 if recipe.get("layout") == "one_per_row" else config["conversations_per_row"]
        examples = data["rows"] * (1 - holdout) / per_row
        unit, per_step_amount = "tokens", global_batch * per_row * config["tokens_per_conversation"]
        computed = examples * seq * epochs  # rows of up to max_length: an upper bound of the computed tokens
    elif stage == "grpo":
        seq = recipe["max_prompt_length"] + recipe["max_completion_length"]
        generations = recipe["num_generations"]
        examples = data["rows"] - (holdout if holdout >= 1 else round(data["rows"] * holdout))
        unit, per_step_amount = "replies", global_batch
        # Every reply once through the rollout (2N per token) and once through the update (6N), at full length.
        computed = examples * generations * seq * epochs
        notes.append(
            f"GRPO: {global_batch // generations} problems x {generations} replies per optimizer step, replies up to "
            f"{seq} tokens with the prompt (an upper bound); generation decodes a token at a time, far below the MFU "
            "of training, so its hours are a lower bound"
        )
    else:
        seq = recipe.get("max_length", 1024)
        pairs = data["rows"] - (holdout if holdout >= 1 else round(data["rows"] * holdout))
        examples = pairs
        unit, per_step_amount = "pairs", global_batch
        computed = pairs * 2 * seq * epochs  # chosen and rejected rows, padded: an upper bound
        notes.append("DPO tokens: chosen + rejected rows of up to max_length each (an upper bound)")
    steps_per_epoch = math.ceil(
        examples / (global_batch // recipe["num_generations"] if stage == "grpo" else global_batch)
    )
    steps = recipe["max_steps"] if recipe.get("max_steps", -1) > 0 else steps_per_epoch * math.ceil(epochs)
    flops = computed * (6 * params + 12 * layers * hidden * seq)
    if stage == "dpo" and recipe.get("precompute_ref_log_probs"):
        flops += pairs * 2 * seq * 2 * params  # one reference forward per pair before training
    if stage == "grpo":
        flops += computed * 2 * params * (2 if recipe.get("beta") else 1)  # the rollout (and a reference's forward)
    name, peak, card = GPUS[gpu]
    hours = {label: flops / (num_gpus * peak * 1e12 * mfu) / 3600 for label, mfu in MFU.items()}
    disk = disk_figures(stage, recipe, data, params, steps, computed / epochs)
    plan = StagePlan(
        stage=stage,
        recipe=str(Path(recipe_path).relative_to(REPO_ROOT) if Path(recipe_path).is_absolute() else recipe_path),
        data=data,
        steps=steps,
        global_batch=global_batch,
        batch=f"{micro} per device x {accumulation} accumulation x {num_gpus} GPUs = {global_batch}",
        per_step=count(per_step_amount, unit),
        disk=disk,
        memory={},
        time={
            "flops": flops,
            **{f"hours at {k} MFU": v for k, v in hours.items()},
            "upstream measured": UPSTREAM_HOURS[stage],
        },
        notes=notes,
    )
    if memory:
        with tempfile.NamedTemporaryFile("w", suffix=f"_{stage}.yaml", delete=False) as merged:
            yaml.safe_dump(recipe, merged)
        plan.memory = memory_per_device(stage, merged.name, num_gpus)
        Path(merged.name).unlink()
        plan.memory.update(card=name, card_gib=card, fits=plan.memory["per_device_gib"] <= card)
    return plan


def disk_figures(stage: str, recipe: dict, data: dict, params: int, steps: int, tokens_per_epoch: float) -> dict:
    """Bytes on disk: the download, the token cache, one checkpoint and the checkpoints kept, the final model."""
    weights = params * 4  # fp32 safetensors: training keeps fp32 weights
    optimizer = 0 if recipe.get("save_only_model") else params * ADAM_BYTES.get(recipe.get("optim"), 8)
    checkpoint = weights + optimizer
    keep = recipe.get("keep_checkpoints") or recipe.get("save_total_limit")
    strategy = recipe.get("save_strategy", "steps")
    if strategy == "no":
        saves = 0
    elif strategy == "epoch":
        saves = math.ceil(recipe.get("num_train_epochs", 1))
    else:
        saves = math.ceil(steps / recipe.get("save_steps", 500))
    kept = min(saves, keep) if keep else saves
    cache = {"pt": tokens_per_epoch * 4, "sft": (data.get("tokens") or 0) * 16}.get(stage, 0)
    return {
        "download": data["download"],
        "cache": cache,
        "checkpoint": checkpoint,
        "checkpoints_kept": kept,
        "checkpoints": checkpoint * kept,
        "final_model": weights,
        "total": data["download"] + cache + checkpoint * kept + weights,
    }


def render(plans: list[StagePlan], num_gpus: int, gpu: str) -> str:
    name, peak, card = GPUS[gpu]
    lines = [
        f"Plan for {num_gpus} x {name} ({peak:g} TFLOP/s dense in half precision each, {card:g} GiB usable)",
        "",
        "| | " + " | ".join(p.stage.upper() for p in plans) + " |",
        "|---" * (len(plans) + 1) + "|",
    ]

    def row(label, values):
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("recipe", [p.recipe for p in plans])
    row(
        "data",
        [
            ", ".join(count(p.data[k], k) for k in ("rows", "tokens") if p.data.get(k)) + f" ({p.data['source']})"
            for p in plans
        ],
    )
    row("download", [human(p.disk["download"]) if p.disk["download"] else "none" for p in plans])
    row("optimizer batch", [p.batch for p in plans])
    row("per optimizer step", [p.per_step for p in plans])
    row("optimizer steps", [f"{p.steps:,}" for p in plans])
    row("disk: token cache", [human(p.disk["cache"]) if p.disk["cache"] else "none" for p in plans])
    row("disk: checkpoints", [f"{p.disk['checkpoints_kept']} x {human(p.disk['checkpoint'])}" for p in plans])
    row("disk: in all", [human(p.disk["total"]) for p in plans])
    if all(p.memory for p in plans):
        row(
            "GPU memory per device",
            [
                f"{p.memory['per_device_gib']:.1f} GiB: "
                + ("fits" if p.memory["fits"] else f"DOES NOT FIT in {p.memory['card_gib']:g} GiB")
                for p in plans
            ],
        )
    row("training FLOPs", [f"{p.time['flops']:.2e}" for p in plans])
    for label in MFU:
        row(f"time at {label} MFU", [duration(p.time[f"hours at {label} MFU"]) for p in plans])
    if all(p.recipe.endswith("_full.yaml") for p in plans):
        row("upstream measured", [p.time["upstream measured"] for p in plans])
    lines.append("")
    lines += [f"- {note}" for p in plans for note in p.notes]
    lines.append(
        f"- GPU memory: benchmarks/memory.py's fake-tensor estimate, gradients and optimizer state sharded "
        f"over the GPUs (ZeRO-2), plus {CUDA_CONTEXT_GIB} GiB of CUDA context; disk: fp32 weights and the "
        "optimizer state per checkpoint."
    )
    return "\n".join(lines) + "\n"


def parse_overrides(flags: list[str]) -> dict:
    """``--key value`` pairs, values read as YAML (numbers, booleans, lists in brackets)."""
    overrides, i = {}, 0
    while i < len(flags):
        if not flags[i].startswith("--") or i + 1 >= len(flags):
            raise SystemExit(f"recipe values come as --key value pairs, got {' '.join(flags[i:])}")
        overrides[flags[i][2:]] = yaml.safe_load(flags[i + 1])
        i += 2
    return overrides


def main(argv: list[str] | None = None) -> list[StagePlan]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", nargs="?", default="all", choices=["pt", "sft", "dpo", "grpo", "all"])
    parser.add_argument("--num_gpus", type=int, default=1, help="GPUs in all (machines x GPUs per machine).")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100", help="The card, for its peak and memory.")
    parser.add_argument(
        "--recipes",
        choices=["full", "t4"],
        default="full",
        help="full: configs/<stage>_full.yaml; "
        "t4: the demo's 1B shape on a 16 GB card (configs/<stage>_t4_demo.yaml).",
    )
    parser.add_argument("--no_memory", action="store_true", help="Skip the GPU memory estimate (it takes a minute).")
    parser.add_argument("--json", default=None, help="Also write the figures to this file.")
    args, flags = parser.parse_known_args(argv)
    if args.num_gpus < 1:
        parser.error("--num_gpus must be at least 1")
    overrides = parse_overrides(flags)
    stages = ["pt", "sft", "dpo"] if args.stage == "all" else [args.stage]
    if args.recipes == "t4" and "grpo" in stages:
        parser.error("GRPO has no T4 recipe: plan it with --recipes full")
    template = "configs/{stage}_full.yaml" if args.recipes == "full" else "configs/{stage}_t4_demo.yaml"
    plans = [
        plan_stage(
            s, str(REPO_ROOT / template.format(stage=s)), overrides, args.num_gpus, args.gpu, not args.no_memory
        )
        for s in stages
    ]
    print(render(plans, args.num_gpus, args.gpu))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in plans], indent=2, default=str), encoding="utf-8")
    return plans


if __name__ == "__main__":
    main()
