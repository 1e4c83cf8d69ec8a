"""Where generation and scoring run: the device, the weights' dtype there, and giving memory back between models."""

from __future__ import annotations

import gc

import torch

from utils.train import hardware


def release_cached_memory() -> None:
    """Give freed tensors back: collect the garbage, then empty CUDA's cache so the next model can use it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is present, else ``cpu``; any other value is kept (``cpu``, ``cuda:1``)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def inference_dtype(device: str) -> torch.dtype:
    """Weights for generation and scoring: the training precision the device would get (fp16 on a T4, bf16 on
    Ampere), fp32 on CPU."""
    found = hardware.detect_hardware(use_cpu=not device.startswith("cuda"))
    return hardware.torch_dtype_for(hardware.select_precision("auto", found))
