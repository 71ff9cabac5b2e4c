"""Whether bf16 autocast pays on this CPU.

On CPUs with native bf16 (Intel AMX or AVX512-BF16) it is ~1.6x faster than fp32; on others (e.g. an
AVX2-only AMD EPYC) oneDNN emulates it and one ResNet18 batch takes ~5x *longer* than in fp32. So
inference and CPU training use bf16 only where oneDNN reports native support.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
