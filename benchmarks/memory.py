"""Peak training memory of a recipe, accounted on fake tensors: no GPU (and no RAM) of that size is needed.

    python -m benchmarks.memory --config configs/pt_t4_demo.yaml      # the T4-class demo recipe (1B, seq 128)
    python -m benchmarks.memory --config configs/pt_24gb.yaml         # the 24 GB recipe (1B, seq 1024)
    python -m benchmarks.memory --config configs/dpo_full.yaml --shape 1b
    python -m benchmarks.memory --config configs/grpo_full.yaml --shape 1b     # rollout, then the update
    python -m benchmarks.memory --shape 1b --seq_len 128 --batch_size 4 --precision fp16 \\
        --activation_checkpointing --measure          # on a GPU: the estimate and the measurement side by side
    python -m benchmarks.memory --config configs/sft_lora_16gb.yaml --shape 1b     # LoRA (adapters below)
    python -m benchmarks.memory --config configs/sft_lora_16gb.yaml --shape 1b --load_in_4bit    # QLoRA

How: two optimizer steps with the recipe's model shape, micro-batch, sequence length, precision (autocast over
fp32 master weights, as the Trainer does), gradient checkpointing, optimizer and (DPO) reference model run under
FakeTensorMode, where every tensor has a shape, a dtype and a device but no storage, while PyTorch's MemTracker
records each allocation by kind. The peak is the most that was live at once, with its breakdown.
GRPO first generates a rollout (``rollout_rows`` replies of prompt + completion tokens at once, per process), then
trains on ``batch_size`` of them per micro-batch: its generation is accounted as one no-grad forward over the full
length that keeps the key/value cache (the cache's size when the longest reply ends, plus one layer's prefill
activations), before the training step. With vLLM (``use_vllm``) the rollout lives in vLLM's own share of the card
(``vllm_gpu_memory_utilization``) instead.

Not counted: the CUDA context (~0.5 GB), the caching allocator's fragmentation (typically 5-15%) and kernel
workspaces (cuBLAS, attention), so keep ~1.5 GB of headroom; ``--measure`` shows the real figure on a GPU.
The loss goes through the fused LM head as in the recipes (``--fused_lm_head off``: full fp32 logits).
8-bit AdamW (bitsandbytes) cannot run on fake tensors: its state is allocated with bitsandbytes' layout
(one uint8 per value for each moment plus one fp32 scale per 256 values; fp32 moments for tensors under 4096
values and for embeddings, which the Trainer keeps in 32 bits), and its in-place update allocates nothing.

Adapters (``--use_peft``, or a recipe with ``use_peft: true``): the model is wrapped by peft with the recipe's
``LoraConfig`` (``utils.train.adapters.peft_config``), as TRL wraps it. The frozen base is held in the compute
precision and reported as "frozen weights" (it has no gradient and no optimizer state); the adapters are the
trainable parameters, in fp32 as peft keeps them (bf16 over a 4-bit base, as TRL casts them for QLoRA), with their
gradients and AdamW state. With ``--load_in_4bit`` each adapted projection of the base is held as bitsandbytes' NF4
layout (half a byte per weight, one fp32 scale per 64; with nested quantization an 8-bit scale and one fp32 per 256
blocks) and expanded to the compute precision for each matmul, forward and backward, as bitsandbytes does; the
embedding (tied to the LM head), the norms and the biases stay in the compute precision. A DPO reference is the
same model with the adapters switched off, as TRL does it: no second copy, and its forward runs under no_grad, whose
passing activations stay below the training step's, so a live reference counts as a precomputed one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import math
import types
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker
from transformers import HfArgumentParser, TrainingArguments
from trl import DPOConfig, GRPOConfig, SFTConfig

from benchmarks.train_speed import SHAPES, step_loss
from utils.data.collate import IGNORE_INDEX, PackedCollator
from utils.modeling import SHAPE_FIELDS, ModelShapeArguments, build_model, count_parameters, use_fused_lm_head
from utils.train.adapters import AdapterArguments, peft_config
from utils.train.args import read_recipe
from utils.train.hardware import torch_dtype_for

OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit")
# Optimizer-state layout of bitsandbytes' blockwise 8-bit Adam.
BNB_BLOCK, BNB_MIN_8BIT_SIZE = 256, 4096
# MemTracker's kinds; "Other" holds what is registered as plain tensors: the 8-bit optimizer state.
KINDS = {
    "Parameter": "parameters",
    "Gradient": "gradients",
    "Optstate": "optimizer state",
    "Other": "other",
    "Activation": "activations",
    "Temp": "temporaries",
    "Buffer": "buffers",
}
# bitsandbytes' 4-bit layout: two weights per byte, one absmax per block of 64 (fp32; nested: uint8 plus one fp32
# per 256 blocks).
NF4_BLOCK, NF4_NESTED_BLOCK = 64, 256


@dataclass
class Setup:
    """What decides the memory of one training step."""

    stage: str
    shape: ModelShapeArguments
    seq_len: int
    batch_size: int
    precision: str
    activation_checkpointing: bool
    optim: str
    fused_lm_head: bool = True
    live_reference: bool = False
    source: str = "flags"
    adapters: AdapterArguments | None = None  # LoRA / QLoRA: a frozen base and trainable adapters
    accumulation: int = 1  # micro-batches per optimizer step: their gradients stay resident between them
    rollout_rows: int = 0  # GRPO: replies generated at once (per process) before the update


def recipe_setup(stage: str, config: str, shape_name: str) -> Setup:
    """Read a stage recipe: its shape, sequence length, micro-batch, precision and levers, with the Trainer's
    (or TRL's) defaults for what the recipe leaves out. The stage-only keys a memory estimate needs are read
    from the YAML as written (every shipped recipe sets them)."""
    recipe = read_recipe(config)
    config_type = {"pt": TrainingArguments, "sft": SFTConfig, "dpo": DPOConfig, "grpo": GRPOConfig}[stage]
    known = {f.name for f in fields(config_type)}
    (train,) = HfArgumentParser(config_type).parse_dict(
        {"output_dir": "unused", **{k: v for k, v in recipe.items() if k in known}, "bf16": False}
    )
    if stage == "pt":
        if "block_size" not in recipe:
            raise SystemExit(f"{config}: no block_size (the sequence length of a PT recipe)")
        shape_keys = ("base_config", *SHAPE_FIELDS)
        shape = ModelShapeArguments(**{k: recipe[k] for k in shape_keys if k in recipe})
        seq_len = recipe["block_size"]
    else:
        checkpoint = Path(recipe.get("model_name_or_path", "")) / "config.json"
        # The SFT/DPO recipes start from a trained checkpoint; without one, the shape comes from --shape.
        shape = ModelShapeArguments(base_config=str(checkpoint)) if checkpoint.is_file() else shape_of(shape_name)
        if stage == "grpo":
            if "max_prompt_length" not in recipe:
                raise SystemExit(f"{config}: no max_prompt_length (a GRPO row is prompt + completion)")
            seq_len = recipe["max_prompt_length"] + train.max_completion_length
        else:
            seq_len = train.max_length
    precision = recipe.get("precision", "auto")
    if precision == "auto":
        precision = "fp16" if train.fp16 else "bf16"  # what auto picks on a GPU (fp16 and bf16 take the same room)
    return Setup(
        stage=stage,
        shape=shape,
        seq_len=seq_len,
        batch_size=train.per_device_train_batch_size,
        precision=precision,
        activation_checkpointing=train.activation_checkpointing,
        optim=getattr(train.optim, "value", train.optim),
        # PT's auto turns it on on CUDA GPUs; TRL's SFT and DPO trainers always use it.
        fused_lm_head=stage != "pt" or str(recipe.get("fused_lm_head", "auto")).lower() != "false",
        live_reference=(stage == "dpo" and not train.precompute_ref_log_probs) or (stage == "grpo" and train.beta > 0),
        source=config,
        adapters=recipe_adapters(recipe),
        accumulation=train.gradient_accumulation_steps,
        rollout_rows=train.generation_batch_size if stage == "grpo" else 0,
    )


def recipe_adapters(recipe: dict) -> AdapterArguments | None:
    """A recipe's adapter settings (``use_peft: true``), with the stage's defaults for what it leaves out."""
    if not recipe.get("use_peft"):
        return None
    names = {f.name for f in fields(AdapterArguments)}
    return AdapterArguments(**{key: value for key, value in recipe.items() if key in names})


def shape_of(name: str) -> ModelShapeArguments:
    return ModelShapeArguments(**SHAPES[name])


def make_batch(setup: Setup, vocab: int, device: torch.device) -> dict:
    """A full micro-batch: PT rows, SFT rows packed with two conversations (one flat row), DPO chosen+rejected rows,
    GRPO prompt+reply rows."""
    seq, bsz = setup.seq_len, setup.batch_size
    if setup.stage == "pt":
        ids = torch.randint(0, vocab, (bsz, seq), device=device)
        return {"input_ids": ids, "labels": ids}
    if setup.stage == "sft":
        examples = []
        for _ in range(bsz):
            ids = torch.randint(0, vocab, (seq,))
            examples.append({"input_ids": ids, "labels": ids.clone(), "seq_lengths": [seq // 2, seq - seq // 2]})
        batch = PackedCollator(pad_token_id=0)(examples)
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    ids = torch.randint(0, vocab, ((2 if setup.stage == "dpo" else 1) * bsz, seq), device=device)
    labels = ids.clone()
    labels[:, : seq // 4] = IGNORE_INDEX  # the prompt
    return {"input_ids": ids, "labels": labels}


def rollout(model, setup: Setup, device: torch.device, autocast: dict) -> None:
    """GRPO's generation before an update: the key/value cache of ``rollout_rows`` full-length replies, made by one
    no-grad forward of the layers that keeps it, and the fp32 logits of one position per reply (what a decoding step
    scores; through the layers only, as the LM head module would otherwise be tracked twice), then freed."""
    model.eval()  # generation runs without activation checkpointing, which would turn the cache off
    with torch.no_grad(), torch.autocast(**autocast):
        ids = torch.randint(0, model.config.vocab_size, (setup.rollout_rows, setup.seq_len), device=device)
        output = model.model(input_ids=ids, use_cache=True)
        logits = torch.empty(setup.rollout_rows, model.config.vocab_size, dtype=torch.float32, device=device)
    del output, logits
    model.train()


def bnb_state(model: torch.nn.Module) -> list[torch.Tensor]:
    """Tensors of the size bitsandbytes' 8-bit AdamW keeps per trainable parameter, under the Trainer.

    The Trainer registers a 32-bit override for every ``nn.Embedding`` weight (here the 151,936 x 1,024
    embedding, tied to the LM head), so those keep two fp32 moments like any tensor under 4096 values.
    """
    fp32 = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    state, seen = [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.numel() < BNB_MIN_8BIT_SIZE or id(p) in fp32:
            state += [torch.empty_like(p, dtype=torch.float32) for _ in range(2)]
        else:
            blocks = math.ceil(p.numel() / BNB_BLOCK)
            state += [torch.empty_like(p, dtype=torch.uint8) for _ in range(2)]
            state += [torch.empty(blocks, dtype=torch.float32, device=p.device) for _ in range(2)]
    return state


def bnb_optimizer(model: torch.nn.Module):
    """The real 8-bit AdamW with the Trainer's 32-bit override for embeddings (for ``--measure``)."""
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})
    return bitsandbytes.optim.AdamW(model.parameters(), lr=1e-4, optim_bits=8)


class Dequantize4bit(torch.autograd.Function):
    """bitsandbytes' 4-bit matmul as memory sees it: the weight expanded to the compute dtype for the product,
    forward and again backward (a temporary each time); only the input's gradient is computed."""

    @staticmethod
    def forward(ctx, x, packed, shape, dtype):
        ctx.shape, ctx.dtype = shape, dtype
        return x @ torch.empty(shape, dtype=dtype, device=x.device).t()

    @staticmethod
    def backward(ctx, grad):
        return grad @ torch.empty(ctx.shape, dtype=ctx.dtype, device=grad.device), None, None, None


class Linear4bit(torch.nn.Module):
    """A frozen projection held in bitsandbytes' NF4 layout (its buffers), computing in ``dtype``."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype, nested: bool) -> None:
        super().__init__()
        self.shape, self.dtype = (linear.out_features, linear.in_features), dtype
        size = linear.out_features * linear.in_features
        blocks = math.ceil(size / NF4_BLOCK)
        self.register_buffer("packed", torch.empty(size // 2, dtype=torch.uint8))
        self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8 if nested else torch.float32))
        if nested:
            self.register_buffer("absmax2", torch.empty(math.ceil(blocks / NF4_NESTED_BLOCK), dtype=torch.float32))
        # bitsandbytes keeps a bias (Qwen2's q/k/v have one) in the compute dtype
        bias = None if linear.bias is None else torch.empty(linear.out_features, dtype=dtype)
        self.register_buffer("bias", bias)

    def forward(self, x):
        out = Dequantize4bit.apply(x, self.packed, self.shape, self.dtype)
        return out if self.bias is None else out + self.bias


def adapter_model(setup: Setup, device: torch.device):
    """The peft-wrapped model of an adapter run (see the module docstring), built in place on ``device``.

    Fake tensors cannot be moved or cast after they exist (peft casts the adapters it creates), so the model is
    wrapped on the meta device and every tensor is then created once with its final dtype. MemTracker hooks the
    gradient of every parameter it meets, so the frozen weights are registered as buffers: what they are to memory.
    """
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    adapters, compute = setup.adapters, torch_dtype_for(setup.precision)
    if device.type == "cuda":  # --measure: the real thing (LoRA; a 4-bit base needs a checkpoint to quantize)
        with device:
            base = build_model(setup.shape, dtype=compute, attn_implementation="sdpa")
        return get_peft_model(base, peft_config(adapters))
    with torch.device("meta"):
        model = get_peft_model(build_model(setup.shape, attn_implementation="sdpa"), peft_config(adapters))
    trainable = torch.bfloat16 if adapters.load_in_4bit else torch.float32
    with device:
        if adapters.load_in_4bit:
            for layer in model.modules():
                if isinstance(layer, LoraLayer):
                    layer.base_layer = Linear4bit(layer.base_layer, compute, adapters.use_bnb_nested_quant)
        made: dict[int, torch.Tensor] = {}  # tied weights (embedding = LM head) are made once
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                if id(param) not in made:
                    dtype = trainable if param.requires_grad else compute
                    made[id(param)] = torch.empty(param.shape, dtype=dtype)
                    if param.requires_grad:
                        made[id(param)] = torch.nn.Parameter(made[id(param)])
                del module._parameters[name]
                if param.requires_grad:
                    module.register_parameter(name, made[id(param)])
                else:
                    module.register_buffer(name, made[id(param)])
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_meta:
                    module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)
    if setup.activation_checkpointing:
        model.enable_input_require_grads()  # the frozen embedding's output must carry gradients, as TRL does it
    return model


def train_steps(setup: Setup, device: torch.device, tracker: MemTracker | None, steps: int = 2) -> None:
    """The step the Trainer runs: fp32 weights, autocast forward, backward, optimizer step, zero_grad."""
    if setup.adapters is not None:
        model = adapter_model(setup, device)
    else:
        with device:  # built in place: a fake model cannot be moved, and a real 1B one need not be
            model = build_model(setup.shape, attn_implementation="sdpa")
    if setup.activation_checkpointing:
        model.activation_checkpointing_enable()
    if setup.fused_lm_head:
        use_fused_lm_head(model.get_base_model() if setup.adapters is not None else model)
    model.train()
    externals: list = [model]
    reference = None
    if setup.live_reference and setup.adapters is None:
        # TRL loads the reference in the policy's dtype (fp32) and never trains it
        with device:
            # Left requiring grad (MemTracker hooks every parameter it meets) but only ever run under no_grad.
            reference = build_model(setup.shape, attn_implementation="sdpa").eval()
        if setup.fused_lm_head:
            use_fused_lm_head(reference)
        externals.append(reference)
    if setup.optim == "adamw_bnb_8bit" and device.type == "cuda":
        optimizer = bnb_optimizer(model)
    elif setup.optim == "adamw_bnb_8bit":  # fake tensors: its state by layout (its kernels need real memory)
        optimizer = None
        externals += bnb_state(model)
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=setup.optim == "adamw_torch_fused")
        externals.append(optimizer)
    dtype = torch_dtype_for(setup.precision)
    autocast = dict(device_type=device.type, dtype=dtype, enabled=setup.precision != "fp32")
    if tracker is not None:
        tracker.track_external(*externals)
    with tracker if tracker is not None else contextlib.nullcontext():
        for _ in range(steps):
            if setup.rollout_rows:  # at an optimizer-step boundary: no gradient is alive
                rollout(model, setup, device, autocast)
                if tracker is not None:
                    tracker.reset_mod_stats()  # the rollout's forward is one iteration, the update another
            # With accumulation the gradients of the first micro-batch are alive through the next one's forward
            # and backward: two micro-batches show that peak (more would repeat it).
            for _ in range(min(setup.accumulation, 2)):
                batch = make_batch(setup, model.config.vocab_size, device)
                with torch.autocast(**autocast):
                    loss = step_loss(setup.stage, model, batch, setup.fused_lm_head, reference)
                loss.backward()
                if tracker is not None:
                    tracker.reset_mod_stats()  # MemTracker keeps per-module stats of one forward only
            if optimizer is not None:
                optimizer.step()
            model.zero_grad(set_to_none=True)


class _InPlaceKernel:
    """Stands for a Triton kernel launch (``kernel[grid](...)``): it writes into buffers it is given and
    allocates nothing, which is all the accounting needs to know of it."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def gpu_lm_head_allocations():
    """Make TRL's fused LM head allocate on fake CPU tensors what it allocates on a GPU.

    On a CPU it folds each logits tile with torch ops (several tile-sized temporaries); on a GPU, with
    Triton kernels that work in place, and it accumulates gradients with fp32-output GEMMs. The tile
    buffers, the per-token statistics and the fp32 gradient accumulators are the same on both. One
    difference is kept: here every position is scored (the GPU scores labelled ones only), a slight
    overestimate for SFT and DPO, whose prompts are unlabelled.
    """
    import trl.trainer.utils  # noqa: F401  (bound to the real _use_triton first: it must keep scoring all positions)
    from trl.kernels import chunked_logprob as kernels

    names = ("_use_triton", "_forward_kernel", "_backward_kernel", "_addmm_fp32", "triton")
    saved = {name: getattr(kernels, name) for name in names if hasattr(kernels, name)}
    kernels._use_triton = lambda device: True
    kernels._forward_kernel = kernels._backward_kernel = _InPlaceKernel()
    kernels._addmm_fp32 = lambda acc, a, b: torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    kernels.triton = types.SimpleNamespace(cdiv=lambda a, b: -(-a // b))
    try:
        yield
    finally:
        for name in names:
            if name in saved:
                setattr(kernels, name, saved[name])
            else:
                delattr(kernels, name)


class PeakTracker(MemTracker):
    """MemTracker that keeps the overall peak only, the one figure read here. Its per-module peaks cost a pass over
    every module at every operation: minutes for the 1B, hours once peft adds its ~60 modules per layer."""

    def _update_peak_stats(self, peak_state) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snapshot[_TOTAL_KEY]:
                self._peak_mem[device] = snapshot[_TOTAL_KEY]
                self._peak_mem_snap[device] = dict(snapshot)


def estimate(setup: Setup) -> dict[str, float]:
    """Peak bytes by kind, in GiB, from two fake training steps on the CPU (no storage is allocated)."""
    tracker = PeakTracker()
    with FakeTensorMode(), gpu_lm_head_allocations():
        train_steps(setup, torch.device("cpu"), tracker)
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    out = {name: 0.0 for name in KINDS.values()}
    for kind, value in peak.items():
        name = getattr(kind, "value", kind)
        if name in KINDS:
            out[KINDS[name]] += value / 2**30
    out["peak"] = peak["Total"] / 2**30
    return out


def measure(setup: Setup) -> float:
    """The same steps on real CUDA tensors: torch's peak allocated memory in GiB."""
    if setup.optim == "adamw_bnb_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise SystemExit("--measure with adamw_bnb_8bit needs bitsandbytes (requirements/gpu.txt)")
    if setup.adapters is not None and setup.adapters.load_in_4bit:
        raise SystemExit("--measure with --load_in_4bit: quantizing needs a saved checkpoint; measure a QLoRA run")
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    train_steps(setup, device, tracker=None)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**30


def adapter_description(adapters: AdapterArguments) -> str:
    base = f"4-bit {adapters.bnb_4bit_quant_type} base" if adapters.load_in_4bit else "frozen base"
    return f", LoRA r={adapters.lora_r} on {' '.join(adapters.lora_target_modules)} over a {base}"


def print_report(setup: Setup, parameters: int, row: dict[str, float], measured: float | None) -> None:
    print(
        f"\n{setup.stage.upper()} {setup.source}: {parameters:,} parameters, micro-batch {setup.batch_size} x "
        f"{setup.seq_len} tokens, {setup.precision} autocast over "
        f"{'fp32 weights' if setup.adapters is None else 'the weights below'}, activation checkpointing "
        f"{'on' if setup.activation_checkpointing else 'off'}, {setup.optim}, {setup.accumulation} micro-batch(es) "
        "per optimizer step"
        + (", fused LM head" if setup.fused_lm_head else ", full logits")
        + (", live reference model" if setup.live_reference else "")
        + (adapter_description(setup.adapters) if setup.adapters is not None else "")
        + (f", a rollout of {setup.rollout_rows} replies generated at once" if setup.rollout_rows else "")
    )
    scale, unit = (1, "GiB") if row["peak"] >= 1 else (1024, "MiB")  # tiny shapes read better in MiB
    labels = {
        "other": "optimizer state (8-bit)",
        "parameters": "parameters (+ reference)" if setup.live_reference else "parameters",
    }
    if setup.adapters is not None:
        labels.update(parameters="adapters (trainable)", buffers="frozen base weights (+ buffers)")
    for name in KINDS.values():
        if row[name]:
            label = labels.get(name, name)
            print(f"  {label:<34}{scale * row[name]:>9.2f} {unit}")
    print(
        f"  {'estimated peak (live at once)':<34}{scale * row['peak']:>9.2f} {unit}   fake tensors, no GPU used; "
        "a GPU adds ~1.5 GiB (CUDA context, allocator)"
    )
    if measured is not None:
        print(
            f"  {'measured peak':<34}{scale * measured:>9.2f} {unit}   {torch.cuda.get_device_name()}; "
            f"estimate / measured = {row['peak'] / measured:.2f}"
        )


def with_adapter_flags(adapters: AdapterArguments | None, args) -> AdapterArguments | None:
    """The recipe's adapters, or the stage defaults for ``--use_peft``, with ``--lora_r`` and ``--load_in_4bit``."""
    if adapters is None and not (args.use_peft or args.load_in_4bit):
        return None
    adapters = adapters or AdapterArguments(use_peft=True)
    if args.lora_r is not None:
        adapters.lora_r = args.lora_r
    adapters.load_in_4bit = adapters.load_in_4bit or args.load_in_4bit
    return adapters


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="A stage recipe (YAML); its settings replace the flags below.")
    parser.add_argument(
        "--stage",
        choices=["pt", "sft", "dpo", "grpo"],
        default=None,
        help="Stage of the step (default: from the recipe's name, else pt).",
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="1b",
        help="Shape without a recipe, or for SFT/DPO recipes without their checkpoint.",
    )
    parser.add_argument("--seq_len", type=int, default=1024, help="Tokens per row.")
    parser.add_argument("--batch_size", type=int, default=1, help="Rows per micro-batch (DPO: pairs).")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16", help="Autocast dtype.")
    parser.add_argument("--activation_checkpointing", action="store_true", help="Recompute activations in backward.")
    parser.add_argument("--optim", choices=OPTIMIZERS, default="adamw_torch_fused", help="Optimizer (its state).")
    parser.add_argument(
        "--fused_lm_head",
        choices=["on", "off"],
        default="on",
        help="Loss through the fused LM head (recipes on GPUs) or full logits.",
    )
    parser.add_argument(
        "--live_reference", action="store_true", help="DPO: keep a reference model (precompute_ref_log_probs false)."
    )
    parser.add_argument(
        "--accumulation", type=int, default=1, help="Micro-batches per optimizer step (gradients stay resident)."
    )
    parser.add_argument(
        "--rollout_rows", type=int, default=0, help="GRPO: replies generated at once before the update (per process)."
    )
    parser.add_argument("--measure", action="store_true", help="Also run the step on the GPU and print its peak.")
    parser.add_argument("--use_peft", action="store_true", help="LoRA adapters on a frozen base (recipes: use_peft).")
    parser.add_argument("--lora_r", type=int, default=None, help="LoRA rank (default: the recipe's, else 16).")
    parser.add_argument("--load_in_4bit", action="store_true", help="QLoRA: the frozen base in 4 bits (NF4).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.measure and not torch.cuda.is_available():
        raise SystemExit("--measure needs a CUDA GPU: the estimate alone runs anywhere")
    stage = args.stage or next(
        (s for s in ("sft", "grpo", "dpo") if args.config and s in Path(args.config).name), "pt"
    )
    if args.config:
        setup = recipe_setup(stage, args.config, args.shape)
    else:
        setup = Setup(
            stage,
            shape_of(args.shape),
            args.seq_len,
            args.batch_size,
            args.precision,
            args.activation_checkpointing,
            args.optim,
            args.fused_lm_head == "on",
            args.live_reference,
            accumulation=args.accumulation,
            rollout_rows=args.rollout_rows if stage == "grpo" else 0,
        )
    setup.adapters = with_adapter_flags(setup.adapters, args)
    with torch.device("meta"):
        parameters = count_parameters(build_model(setup.shape, attn_implementation="sdpa"))
    row = estimate(setup)
    measured = measure(setup) if args.measure else None
    print_report(setup, parameters, row, measured)
    return {**row, "measured": measured}


if __name__ == "__main__":
    main()
