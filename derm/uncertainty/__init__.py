"""How sure the answer is: prediction sets with a stated coverage (split conformal, derm.uncertainty.conformal)
and a malignancy triage at a validation operating point (derm.uncertainty.triage), fitted on HAM10000
validation probabilities by `derm export` or `python -m derm calibrate-uncertainty`, stored in the
manifest's `uncertainty` section and read back by UncertaintyConfig.from_manifest.

The names below are imported on first use, so the command line's parser stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"UncertaintyConfig": "derm.uncertainty.config", "fit_uncertainty": "derm.uncertainty.config",
            "fit_uncertainty_config": "derm.uncertainty.config", "uncertainty_report": "derm.uncertainty.report",
            "uncertainty_sections": "derm.uncertainty.calibrate"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'derm.uncertainty' has no attribute {name!r}")
