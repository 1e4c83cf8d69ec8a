"""The Qwen2.5 tokenizer, exact and offline, and the small demo tokenizer with the same formats.

Two ways to get the Qwen2.5 tokenizer, in this order:

1. ``models/Qwen2.5-0.5B-Instruct`` already holds tokenizer files (``prepare.sh`` downloads them from
   ModelScope, or ``python -m tools.make_tokenizer`` wrote them): they are loaded as they are.
2. Otherwise it is rebuilt from the Qwen BPE ranks (``qwen.tiktoken``: 151,643 byte tokens with their ranks,
   identical to Qwen2.5's ``vocab.json``; see ``utils.bpe``).

``tools/make_tokenizer.py`` is the command line that writes either tokenizer into a folder.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from utils.bpe import QWEN_SPLIT_PATTERN, load_qwen_ranks, vocab_and_merges

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER_DIR = "models/Qwen2.5-0.5B-Instruct"
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

# (token, id, special): ids and the special flag follow Qwen2.5's tokenizer_config.json, where the
# tool-call and fill-in-the-middle markers are added tokens that decode even with skip_special_tokens.
ADDED_TOKENS: list[tuple[str, int, bool]] = [
    ("<|endoftext|>", 151643, True),
    ("<|im_start|>", 151644, True),
    ("<|im_end|>", 151645, True),
    ("<|object_ref_start|>", 151646, True),
    ("<|object_ref_end|>", 151647, True),
    ("<|box_start|>", 151648, True),
    ("<|box_end|>", 151649, True),
    ("<|quad_start|>", 151650, True),
    ("<|quad_end|>", 151651, True),
    ("<|vision_start|>", 151652, True),
    ("<|vision_end|>", 151653, True),
    ("<|vision_pad|>", 151654, True),
    ("<|image_pad|>", 151655, True),
    ("<|video_pad|>", 151656, True),
    ("<tool_call>", 151657, False),
    ("</tool_call>", 151658, False),
    ("<|fim_prefix|>", 151659, False),
    ("<|fim_middle|>", 151660, False),
    ("<|fim_suffix|>", 151661, False),
    ("<|fim_pad|>", 151662, False),
    ("<|repo_name|>", 151663, False),
    ("<|file_sep|>", 151664, False),
]

# ChatML. The {% generation %} markers let apply_chat_template(return_assistant_tokens_mask=True) and
# TRL find the supervised span: each assistant reply *and* its <|im_end|>, so the model learns to stop.
# No default system prompt: the training data (Infinity-Instruct) mostly has none. A final assistant
# message ends at <|im_end|> (no newline after it), so training rows and DPO replies end exactly
# where generation stops.
#
# Thinking (``apply_chat_template(..., enable_thinking=True)``, the switch Qwen3 uses): every assistant turn opens
# a think block before its answer, ``<think>\n{reasoning_content}\n</think>\n\n{content}``, and the generation
# prompt ends with ``<think>\n``, so a thinking model always starts by reasoning. The opening ``<think>\n`` is
# part of the prompt (never supervised); the reasoning, ``</think>`` and the answer are. Unset or false, the
# template renders exactly what it rendered before the switch existed (``LEGACY_CHAT_TEMPLATES``; a test compares
# the ids), and ``reasoning_content`` is not shown.
#
# ``<think>`` and ``</think>`` are plain text, not added tokens: with an added token, every existing text that
# spells "<think>" (pretraining pages, user messages) would get other ids than it has today, every tokenizer
# folder already saved (the Qwen one and the 4k demo one) would need new files and possibly new embedding rows, and
# a model trained from scratch would meet the new ids untrained. As text they cost three tokens each
# (``<th`` ``ink`` ``>``), the model reads them with everything it learned, and old checkpoints gain the switch
# by their template alone.
THINKING_SWITCH = "enable_thinking"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_IF_THINKING = "{%- if " + THINKING_SWITCH + " is defined and " + THINKING_SWITCH + " -%}"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    f"{_IF_THINKING}"
    f"{{{{- '{THINK_OPEN}\\n' -}}}}"
    "{%- generation -%}"
    f"{{{{- (message['reasoning_content'] | default('', true) | trim) + '\\n{THINK_CLOSE}\\n\\n' -}}}}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- if not loop.last -%}{{- '\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    f"{_IF_THINKING}{{{{- '{THINK_OPEN}\\n' -}}}}{{%- endif -%}}"
    "{%- endif -%}"
)
# Earlier versions of CHAT_TEMPLATE, saved with checkpoints that predate the thinking switch. They render what
# CHAT_TEMPLATE renders with thinking off, so ``load_tokenizer`` replaces them by the current one: old checkpoints
# chat identically and gain the switch.
LEGACY_CHAT_TEMPLATES = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- if not loop.last -%}{{- '\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
)


def build_qwen_tokenizer(tiktoken_file: str | None = None) -> PreTrainedTokenizerFast:
    """Build the exact Qwen2.5 tokenizer from BPE ranks: vocab, 151,387 derived merges, NFC,
    the Qwen2 split regex, byte-level pre-tokenizer/decoder and the added tokens at their ids."""
    vocab, merges = vocab_and_merges(load_qwen_ranks(tiktoken_file))
    core = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    _qwen_pipeline(core)
    # Added tokens get ids in the order given, starting after the BPE vocab: 151643, 151644, ...
    for content, expected_id, special in ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        if special:
            core.add_special_tokens([token])
        else:
            core.add_tokens([token])
        actual = core.token_to_id(content)
        if actual != expected_id:
            raise RuntimeError(f"{content} got id {actual}, expected {expected_id}")
    return _wrap(core)


def _wrap(core: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _qwen_pipeline(core: Tokenizer) -> None:
    """NFC, the Qwen2 split regex and byte-level pre-tokenizer/decoder: shared by both tokenizers."""
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)


def train_small_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A small byte-level BPE with Qwen's pipeline, special tokens and chat template, for CPU demos.

    With Qwen's 151,936-entry vocabulary the LM head of a tiny model costs more than all its layers,
    so a CPU demo would spend its minutes on the softmax. The same formats with a few thousand
    tokens let the demo model learn visibly in minutes. Special tokens take ids 0..21.
    """
    from tokenizers.trainers import BpeTrainer

    core = Tokenizer(BPE(fuse_unk=False, byte_fallback=False))
    _qwen_pipeline(core)
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t, _, _ in ADDED_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return _wrap(core)


def has_tokenizer_files(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()


def load_tokenizer(path: str | Path = DEFAULT_TOKENIZER_DIR) -> PreTrainedTokenizerBase:
    """Load the tokenizer from ``path``; if the folder has no tokenizer files, build Qwen2.5's offline.

    A tokenizer without a chat template with ``{% generation %}`` markers (e.g. a bare download, whose template
    produces the same ChatML) gets ours, so every stage formats chats the same way; so does one saved with an
    earlier version of ours (``LEGACY_CHAT_TEMPLATES``), which renders the same bytes with thinking off.
    """
    if has_tokenizer_files(path):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    else:
        logger.info("No tokenizer files in %s: building the Qwen2.5 tokenizer from BPE ranks", path)
        tokenizer = build_qwen_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN
    if not tokenizer.chat_template or "generation" not in tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return upgrade_legacy_template(tokenizer)


def upgrade_legacy_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A template saved by an earlier version of this project becomes the current one (the same bytes with thinking
    off, and the switch); any other template is left as it is."""
    if tokenizer.chat_template in LEGACY_CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def supports_thinking(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template has the thinking switch (ours does; a foreign one may not)."""
    return THINKING_SWITCH in (tokenizer.chat_template or "")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Changes whenever the ids a tokenizer produces could change (a cache key)."""
    state = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer)
    state += f"|eos={tokenizer.eos_token_id}|template={tokenizer.chat_template}"
    return hashlib.sha256(state.encode()).hexdigest()[:16]
