"""bf16 linear layers with their weights laid out once for oneDNN: the CPU decode copy's matmuls.

Why: a bf16 `F.linear` on CPU passes oneDNN a plain (N, K) weight, which it re-lays-out into its blocked
format on every call. A decode step is little but these matmuls (82 % of a batch-1 step of the default model),
so that relayout is paid ~210 times a step. Laying each weight out once (`torch.ops.mkldnn`'s reorder, what
inductor's weight freezing does for CPU) and calling oneDNN's linear on it measured, one core, bf16:
576 x 1536 weight 77 -> 44 us at batch 1 and 189 -> 153 us at batch 32; the 576 x 49,152 output layer
4.1 -> 1.9 ms and 8.1 -> 6.0 ms. The results are bit-identical to `F.linear` in bf16 (tested), so greedy
answers of the bf16 decoder do not change.

Only for weights that no longer change (the decode copy, `HFLanguageModel(decode_dtype="bfloat16")`): a packed
layer keeps its own copy of the weight, which training would leave stale.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


@functools.cache
def packing_available() -> bool:
    """Whether oneDNN's linear with pre-laid-out bf16 weights runs here: a torch built with mkldnn, on a
    CPU with the instructions its bf16 path needs (avx512bw/vl/dq or avx_ne_convert; an AVX2-only CPU
    refuses the reorder)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=torch.bfloat16))
    except RuntimeError:
        return False
    return True


class PackedLinear(torch.nn.Module):
    """y = x W^T + b with W laid out once for oneDNN (bf16, CPU)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.register_buffer("packed_weight", packed, persistent=False)
        self.register_buffer(
            "bias", None if linear.bias is None else linear.bias.detach().clone(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every bf16 `nn.Linear` of a CPU model in place by a `PackedLinear`; the number replaced.

    A model elsewhere, in another dtype, or where the op does not run (`packing_available`) is left as it
    is (0).
    """
    if not packing_available():
        log.info("no oneDNN bf16 weight packing on this torch or CPU; bf16 decoding uses plain F.linear")
        return 0
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, PackedLinear(module))
    return len(targets)
