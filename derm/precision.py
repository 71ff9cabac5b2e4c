"""Whether bf16 autocast pays on this CPU.

Only Intel AMX (its tile units multiply bf16 matrices natively) makes bf16 faster than fp32: ~1.6x.
Everywhere else it is slower: on an AVX2-only AMD EPYC oneDNN emulates bf16 and one ResNet18 batch
takes ~5x *longer* than in fp32, and with AVX512-BF16 but no AMX (Intel Cooper Lake and some cloud
Xeons, AMD Zen 4 and later) one image through a ResNet took about twice as long as in fp32 +
channels_last (`python bench/precision_speed.py`). So inference and CPU training use bf16 only where
the CPU has AMX tiles.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False
