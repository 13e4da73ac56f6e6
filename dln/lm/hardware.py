"""What the CPU runs natively, so that bf16 is used where it is fast and a user is told where it is not.

Why: bf16 on a CPU without bf16 instructions (avx512_bf16 or AMX) is emulated by oneDNN. Measured on a
2-core AVX2 EPYC, one forward + backward of the 135M default model on 4 x 70 tokens, one thread: fp32 12 s,
bf16 autocast 128 s (10x slower). On a CPU with avx512_bf16 the same autocast was 1.6x faster than fp32.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu() -> tuple[str, tuple[str, ...]]:
    """(model name, the flags of `CPU_FLAGS` it has) from /proc/cpuinfo; ("unknown", ()) elsewhere."""
    model, flags = "unknown", set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    return model, tuple(f for f in CPU_FLAGS if f in flags)


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matmuls run natively on `device`: a CUDA GPU with bf16, or a CPU with avx512_bf16/AMX."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(BF16_FLAGS & set(cpu()[1]))


@functools.cache
def warn_if_emulated_bf16(device: str, what: str) -> bool:
    """Log once per (device, what) that bf16 is emulated here, with the fix; True when it is."""
    if native_bf16(device):
        return False
    log.warning(
        "%s asks for bf16 on a CPU without avx512_bf16 or AMX: oneDNN emulates it, about 10x slower than "
        "fp32 here (see dln/lm/hardware.py); turn it off for this machine",
        what,
    )
    return True
