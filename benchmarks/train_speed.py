"""Training speed and memory per stage, configurations side by side in one run.

    python -m benchmarks.train_speed --stage all --shape tiny                  # CPU smoke run (what CI runs)
    python -m benchmarks.train_speed --stage pt --shape 1b --seq_len 1024 --batch_size 8 --steps 20   # one GPU

Configurations:
  baseline  upstream's path: HF defaults (sdpa), SFT rows padded per batch, DPO with a live reference
            forward every step, plain AdamW, no fused kernels.
  ours      this repo's defaults: flash-attention-2 where usable (else sdpa), each micro-batch flattened into
            one row whose documents are isolated by restarting position ids, the fused LM head on GPU (no full
            logits), fused AdamW on GPU, Liger's layer kernels if installed, DPO reference log-probs precomputed
            (precompute_ref_log_probs).
  ours+gc   ours with gradient checkpointing (the memory lever).
  ours+compile  ours under torch.compile.
  ours-fused_head  ours with plain logits + cross-entropy instead of the fused LM head (that lever alone).
  ours+flex ours with flex_attention (block-sparse document mask) instead of flash-attention-2/sdpa: the path
            for GPUs without flash-attn. GPU only (PyTorch has no flex backward on CPU).

Token lengths come from the bundled mini_data, or from the data given with --sft_data / --dpo_data (for
example a prepare.sh download).

Printed per stage and configuration: time per optimizer step, computed and real tokens/s, the real-token
share, MFU (model FLOPs on computed tokens / peak) and useful MFU (on real tokens only), pairs/s for DPO,
and peak memory (CUDA allocated on GPU; the process's peak RSS on CPU). FLOPs per token are
6 x parameters (LM head included, embedding lookup excluded) + 12 x layers x hidden x seq_len for
attention, forward and backward; 2 x parameters for a reference forward. Tokens are random ids; lengths
follow the bundled or real data, so the layouts are the real ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.data.collate import IGNORE_INDEX, PackedCollator
from utils.modeling import ModelShapeArguments, build_model, count_parameters, use_fused_lm_head
from utils.train.hardware import detect_hardware, fused_lm_head_usable, select_attn_implementation

SHAPES = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=4096,
    ),
    "1b": dict(
        hidden_size=1024,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=4,
        intermediate_size=4864,
        vocab_size=151936,
    ),
}
# Dense bf16 peak TFLOP/s by GPU name fragment (fp16 for T4/V100, which have no bf16 tensor cores).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40": 181.0,
    "4090": 165.0,
    "3090": 71.0,
    "L4": 121.0,
    "A10": 125.0,
    "T4": 65.0,
    "V100": 125.0,
}
CONFIGS = ("baseline", "ours", "ours+gc", "ours+compile", "ours-fused_head", "ours+flex")

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    tensors: dict
    real_tokens: int
    computed_tokens: int
    pairs: int = 0


def detect_peak_tflops(device: torch.device) -> tuple[float, str]:
    """Peak from the GPU's name, or, on CPU, the fp32 matmul throughput measured here and now."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peak in PEAK_TFLOPS.items():
            if fragment in name:
                return peak, name
        return 989.0, f"{name} (unknown: assumed 989; pass --peak_tflops)"
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    tflops = 2 * 1024**3 * n / (time.perf_counter() - start) / 1e12
    return tflops, "CPU (peak = measured fp32 matmul throughput)"


def flops_per_token(model, seq_len: int) -> float:
    config = model.config
    params = count_parameters(model)
    if not config.tie_word_embeddings:
        params -= config.vocab_size * config.hidden_size  # the input embedding is a lookup, not a matmul
    return 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def data_lengths(kind: str, source: str | None, tokenizer_dir: str, limit: int = 2000) -> list:
    """Token lengths from real/bundled data: conversations for SFT, (prompt, chosen, rejected) for DPO."""
    from utils.data.chat import SkipRow, conversation_to_messages, encode_messages
    from utils.data.dpo import encode_pair, preference_pair
    from utils.data.parquet import find_parquet_files, read_rows
    from utils.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    out = []
    columns = ["conversations"] if kind == "sft" else ["chosen", "rejected"]
    for _, _, row in read_rows(find_parquet_files(source), columns):
        try:
            if row is None:
                continue
            if kind == "sft":
                out.append(len(encode_messages(tokenizer, conversation_to_messages(row["conversations"]))[0]))
            else:
                ids = encode_pair(tokenizer, preference_pair(row, tokenizer, 512))
                out.append(tuple(len(ids[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")))
        except SkipRow:
            continue
        if len(out) >= limit:
            break
    return out


def make_batches(stage: str, config: str, args, lengths, vocab: int, attn: str, n: int) -> list[Batch]:
    rng = random.Random(0)
    seq, bsz = args.seq_len, args.batch_size
    fitting = [x for x in lengths if x <= seq] if stage == "sft" else []
    if stage == "sft" and not fitting:
        raise ValueError(f"no conversation fits seq_len={seq}")
    collate = PackedCollator(pad_token_id=0, isolate=config != "baseline", single_row=attn == "flash_attention_2")
    batches = []
    for _ in range(n):
        if stage == "pt":
            # Documents of realistic length back to back; baseline attends across them (upstream), ours isolates.
            examples = []
            for _ in range(bsz):
                doc_lengths, total = [], 0
                while total < seq:
                    doc_lengths.append(min(seq - total, max(2, int(rng.expovariate(1 / 400)))))
                    total += doc_lengths[-1]
                ids = torch.randint(0, vocab, (seq,))
                examples.append({"input_ids": ids, "labels": ids.clone(), "seq_lengths": doc_lengths})
            batch = collate(examples)
            batches.append(Batch(batch, bsz * seq, collate.computed_tokens))
        elif stage == "sft":
            if config == "baseline":  # one conversation per row, cut to seq, padded per batch
                rows = [[min(rng.choice(lengths), seq)] for _ in range(bsz)]
            else:  # whole conversations packed into rows of at most seq, best fit decreasing (as TRL's bfd)
                pool = sorted((rng.choice(fitting) for _ in range(bsz * 16)), reverse=True)
                bins: list[list[int]] = []
                for length in pool:
                    fits = [b for b in bins if sum(b) + length <= seq]
                    if fits:
                        min(fits, key=lambda b: seq - sum(b) - length).append(length)
                    else:
                        bins.append([length])
                rows = rng.sample(bins, min(bsz, len(bins)))
            examples = []
            for row in rows:
                ids = torch.randint(0, vocab, (sum(row),))
                examples.append({"input_ids": ids, "labels": ids.clone(), "seq_lengths": row})
            batch = collate(examples)
            batches.append(Batch(batch, sum(map(sum, rows)), collate.computed_tokens))
        else:  # dpo: chosen and rejected rows of each pair, padded per batch (TRL's layout)
            examples, pairs = [], []
            for _ in range(bsz):
                head, chosen, rejected = rng.choice(lengths)
                pairs.append((head, chosen, rejected))
                for reply in (chosen, rejected):
                    total = min(head + reply, seq)
                    ids = torch.randint(0, vocab, (total,))
                    labels = ids.clone()
                    labels[: min(head, total - 1)] = IGNORE_INDEX
                    examples.append({"input_ids": ids, "labels": labels})
            batch = PackedCollator(pad_token_id=0, isolate=False)(examples)
            real = sum(min(h + c, seq) + min(h + r, seq) for h, c, r in pairs)
            batches.append(Batch(batch, real, batch["input_ids"].numel(), pairs=bsz))
        collate.computed_tokens = collate.real_tokens = 0
    return batches


def sequence_logps(model, batch: dict, fused: bool = False) -> torch.Tensor:
    """Summed log-probabilities of each row's labelled tokens: from full logits, or from the fused LM head
    (TRL's DPO path, where the logits are never materialised)."""
    if fused:
        return model(**batch, fused_lm_head=True).log_probs.sum(-1)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (logps * mask).sum(-1)


def step_loss(stage: str, model, batch: dict, fused: bool, reference=None) -> torch.Tensor:
    """One step's loss: the LM loss for PT/SFT; for DPO the sigmoid loss (beta 0.1) against a live reference
    model, or, with none, against precomputed reference log-probs (zeros stand in for them); for GRPO the replies'
    log-probabilities (times an advantage of one), and a reference's under no_grad when it has one (beta > 0)."""
    if stage == "grpo":
        if reference is not None:
            with torch.no_grad():
                sequence_logps(reference, batch, fused)
        return -sequence_logps(model, batch, fused).mean()
    if stage != "dpo":
        return (model(**batch, fused_lm_head=True) if fused else model(**batch)).loss
    policy = sequence_logps(model, batch, fused).view(-1, 2)
    ref = torch.zeros_like(policy)
    if reference is not None:
        with torch.no_grad():
            ref = sequence_logps(reference, batch, fused).view(-1, 2)
    margin = (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])
    return -F.logsigmoid(0.1 * margin).mean()


def run_config(stage: str, config: str, args, lengths, device, peak: float) -> dict:
    torch.manual_seed(0)
    use_ours = config != "baseline"
    if config == "ours+flex" and device.type != "cuda":
        raise ValueError("ours+flex needs a CUDA GPU: PyTorch has no flex_attention backward on CPU")
    hardware = detect_hardware()
    attn = (
        "flex_attention"
        if config == "ours+flex"
        else select_attn_implementation("auto", hardware)[0]
        if use_ours
        else "sdpa"
    )
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    model = build_model(ModelShapeArguments(**SHAPES[args.shape]), attn_implementation=attn).to(device)
    kernels = []
    if use_ours and device.type == "cuda":
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            # Layer kernels only: the loss goes through the fused LM head below, as in the recipes.
            _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False)
            kernels.append("liger")
        except ImportError:
            logger.info("liger-kernel not installed: running without fused kernels")
    fused_head = use_ours and config != "ours-fused_head" and fused_lm_head_usable("auto", hardware)[0]
    if fused_head:
        use_fused_lm_head(model)
        kernels.append("lm_head")
    if config == "ours+gc":
        model.activation_checkpointing_enable()
    model.train()
    forward_model = torch.compile(model) if config == "ours+compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=use_ours and device.type == "cuda")
    reference = None
    if stage == "dpo" and not use_ours:  # a live reference model (ours precomputes its log-probs once)
        reference = build_model(ModelShapeArguments(**SHAPES[args.shape]), attn_implementation=attn).to(device)
        reference.eval().requires_grad_(False)
    batches = make_batches(stage, config, args, lengths, model.config.vocab_size, attn, args.warmup + args.steps)
    per_token = flops_per_token(model, args.seq_len)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(batch: Batch) -> None:
        tensors = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.tensors.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = step_loss(stage, forward_model, tensors, fused_head, reference)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[: args.warmup]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[args.warmup :]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    timed = batches[args.warmup :]
    computed = sum(b.computed_tokens for b in timed)
    real = sum(b.real_tokens for b in timed)
    flops = computed * per_token + (computed * 2 * count_parameters(model) if reference is not None else 0)
    mfu = flops / seconds / (peak * 1e12)
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "stage": stage,
        "config": config,
        "attention": attn,
        "fused_kernels": "+".join(kernels) or "none",
        "step_s": seconds / len(timed),
        "tokens_per_s": computed / seconds,
        "real_tokens_per_s": real / seconds,
        "real_share": real / computed,
        "mfu": mfu,
        "useful_mfu": mfu * real / computed,
        "pairs_per_s": sum(b.pairs for b in timed) / seconds if stage == "dpo" else None,
        "peak_mem_gb": peak_mem,
    }


def print_table(rows: list[dict], device_name: str, peak: float) -> None:
    print(f"\nDevice: {device_name}; peak {peak:.2f} TFLOP/s")
    header = f"{'stage':<6}{'config':<17}{'attention':<19}{'kernels':<15}{'step s':>9}{'tok/s':>12}{'real tok/s':>12}"
    header += f"{'real %':>8}{'MFU %':>8}{'useful %':>9}{'pairs/s':>9}{'peak GB':>9}"
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['stage']:<6}{r['config']:<17}failed: {r['error']}")
            continue
        pairs = f"{r['pairs_per_s']:.2f}" if r["pairs_per_s"] is not None else "-"
        print(
            f"{r['stage']:<6}{r['config']:<17}{r['attention']:<19}{r['fused_kernels']:<15}{r['step_s']:>9.3f}{r['tokens_per_s']:>12,.0f}"
            f"{r['real_tokens_per_s']:>12,.0f}{100 * r['real_share']:>8.1f}{100 * r['mfu']:>8.2f}"
            f"{100 * r['useful_mfu']:>9.2f}{pairs:>9}{r['peak_mem_gb']:>9.2f}"
        )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["pt", "sft", "dpo", "all"], default="all", help="Stage(s) to measure.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="tiny (CPU) or 1b (the recipe).")
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=CONFIGS,
        default=["baseline", "ours"],
        help="Configurations measured side by side.",
    )
    parser.add_argument("--seq_len", type=int, default=1024, help="Sequence length (the full recipe's).")
    parser.add_argument("--batch_size", type=int, default=4, help="Rows per step (DPO: pairs per step).")
    parser.add_argument("--steps", type=int, default=5, help="Timed optimizer steps per configuration.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first (allocation, compilation).")
    parser.add_argument("--peak_tflops", type=float, default=None, help="Override the device's peak TFLOP/s.")
    parser.add_argument("--sft_data", default="mini_data/sft", help="SFT parquet dir the lengths come from.")
    parser.add_argument("--dpo_data", default="mini_data/dpo", help="DPO parquet dir the lengths come from.")
    parser.add_argument("--tokenizer", default="models/Qwen2.5-0.5B-Instruct", help="Tokenizer for the lengths.")
    parser.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak, device_name = (args.peak_tflops, "given") if args.peak_tflops else detect_peak_tflops(device)
    stages = ["pt", "sft", "dpo"] if args.stage == "all" else [args.stage]
    rows = []
    for stage in stages:
        source = {"sft": args.sft_data, "dpo": args.dpo_data}
        lengths = data_lengths(stage, source[stage], args.tokenizer) if stage != "pt" else []
        for config in args.configs:
            try:
                rows.append(run_config(stage, config, args, lengths, device, peak))
            except Exception as err:  # a lever that fails on this hardware must not cost the others' figures
                rows.append({"stage": stage, "config": config, "error": f"{type(err).__name__}: {err}"[:300]})
                logger.warning("%s %s failed: %s", stage, config, rows[-1]["error"])
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_table(rows, device_name, peak)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "peak_tflops": peak, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
