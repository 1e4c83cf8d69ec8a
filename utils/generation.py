"""One way to generate text from a checkpoint, shared by eval, the demo, the tests and the stages."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from utils.data.chat import prompt_ids
from utils.run_info import read_run_info

# The sampling defaults every saved checkpoint carries (Qwen2.5's own settings): sampling rather than greedy,
# which loops on small models, and a mild repetition penalty. Greedy stays one flag away (--do_sample false).
# No length limit here: it would override a caller's max_length; mini_qwen_eval.py has its own.
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}
SAMPLING_KEYS = (*SAMPLING_DEFAULTS, "max_new_tokens")
# What the training stages answer at the end of a run, so the log shows what the model became.
SAMPLE_PROMPTS = {"chat": ["李白是谁？", "who are you?"], "raw": ["李白是", "The history of"]}


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    ended_with_eos: bool


class CollectingStreamer(TextStreamer):
    """Prints text as it is generated and keeps it, so an interrupted answer is not lost."""

    def __init__(self, tokenizer, echo: bool = True):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.echo = echo
        self.text = ""

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.text += text
        if self.echo:
            print(text, flush=True, end="" if not stream_end else None)


def default_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """``SAMPLING_DEFAULTS``, stopping at <|im_end|> (end of a chat turn) or <|endoftext|> (end of a document)."""
    eos = [tokenizer.eos_token_id]
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in eos:
        eos.append(tokenizer.pad_token_id)
    return GenerationConfig(**SAMPLING_DEFAULTS, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig) -> list[int]:
    """The ids that end a reply: the generation config's end ids, then the tokenizer's end-of-turn and pad ids (a
    reply that stops at the pad id, as TRL counts them, ended too)."""
    eos = generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, list) else [] if eos is None else [eos]
    return ids + [i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None and i not in ids]


def is_chat_checkpoint(path: str) -> bool:
    """A PT checkpoint continues raw text; SFT/DPO checkpoints (and foreign ones) are chat models."""
    return (read_run_info(path) or {}).get("stage") != "pt"


def build_generation_config(model: PreTrainedModel, **overrides) -> GenerationConfig:
    """The checkpoint's generation_config.json with any non-None overrides applied."""
    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if not config.do_sample:
        for key in ("temperature", "top_p", "top_k"):
            setattr(config, key, None)
    return config


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    generation_config: GenerationConfig,
    streamer: TextStreamer | None = None,
    thinking: bool = False,
) -> Generation:
    """Generate after ``prompt``: a list of chat messages (rendered with the generation prompt; with ``thinking``,
    an opened think block) or raw text to continue. Stops at the generation config's EOS ids or
    ``max_new_tokens``."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    else:
        ids = prompt_ids(tokenizer, prompt, thinking)
    input_ids = torch.tensor([ids], device=model.device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        generation_config=generation_config,
        streamer=streamer,
    )
    return _generation(tokenizer, output[0, len(ids) :].tolist(), generation_config)


def _generation(tokenizer: PreTrainedTokenizerBase, new: list[int], generation_config: GenerationConfig) -> Generation:
    """The ids generated after a prompt, cut after the first end-of-turn id (a batch pads after it)."""
    eos = generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    end = next((i + 1 for i, token in enumerate(new) if token in eos_ids), len(new))
    new = new[:end]
    ended = bool(new) and new[-1] in eos_ids
    return Generation(tokenizer.decode(new, skip_special_tokens=True), new, ended)


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    generation_config: GenerationConfig,
    thinking: bool = False,
    batch_size: int = 16,
) -> list[Generation]:
    """``generate`` for many chat prompts, ``batch_size`` at a time, left-padded (the padding is masked: replies
    differ from one-by-one generation by float rounding at most). Several times faster on small models, whose
    time goes to the per-step overhead rather than to the arithmetic."""
    results = []
    for start in range(0, len(prompts), batch_size):
        batch = [prompt_ids(tokenizer, p, thinking) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in batch])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            generation_config=generation_config,
        )
        results += [_generation(tokenizer, row[width:].tolist(), generation_config) for row in output]
    return results


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """Typed ``\\n``/``\\t``/``\\\\`` become a newline, a tab and a backslash; other text is untouched
    (Chinese included, which ``unicode_escape`` would mangle)."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)
