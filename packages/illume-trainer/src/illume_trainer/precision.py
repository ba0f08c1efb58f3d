"""The precision a stage trains in when its recipe names none.

bf16 mixed precision (float32 weights and optimizer, bf16 autocast for the matrix products) where
the hardware multiplies bf16 matrices natively: CUDA devices that support bf16, and x86 CPUs with
AVX512-BF16 or AMX-BF16. Elsewhere bf16 products have no hardware support, so float32 stays.
On the 2-core EPYC (AVX512-BF16) that runs the ShapesWorld recipes, `benchmarks/training_speed.py`
measures 411-841 GFLOP/s in bf16 against 134-177 in float32 for a product of the MLLM's size
(two runs), and a ShapesWorld MLLM step in 0.24-0.25 s against 0.48-0.49; stage 2 trained so draws
the same (paired difference -0.002 +- 0.010; benchmarks/RESULTS.md).

Only stages measured to gain take it by default (`STAGES_IN_BF16`): on that CPU the encoder's and
the detokenizer's steps are slower in bf16 (small convolutions and matrices), and the tokenizer's,
faster, has not had its quality measured. A recipe or `--trainer.precision` always wins.
"""

from __future__ import annotations

import torch

#: Stages (illume-train's names) that train in bf16-mixed by default where it is fast.
STAGES_IN_BF16 = frozenset({"mllm"})


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (x86 AVX512-BF16 or AMX), by torch's own
    CPU feature detection; False where this torch build has no such check."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def fast_precision(accelerator: str | None) -> str:
    """The Lightning precision for `accelerator` ("cpu", "gpu", "cuda", "auto" or None):
    bf16-mixed where it has native bf16 matrix units, else 32-true."""
    accelerator = str(accelerator or "auto").lower()
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        return (
            "bf16-mixed"
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else "32-true"
        )
    if accelerator in ("cpu", "auto"):
        return "bf16-mixed" if cpu_has_bf16_units() else "32-true"
    return "32-true"
