"""How sure the answer is: prediction sets with a stated coverage (split conformal, derm.uncertainty.conformal)
and a malignancy triage at a validation operating point (derm.uncertainty.triage), fitted on HAM10000
validation probabilities by `derm export` or `python -m derm calibrate-uncertainty`, stored in the
manifest's `uncertainty` section and read back by UncertaintyConfig.from_manifest."""

from derm.uncertainty.config import UncertaintyConfig, fit_uncertainty, fit_uncertainty_config
from derm.uncertainty.report import uncertainty_report

__all__ = ["UncertaintyConfig", "fit_uncertainty", "fit_uncertainty_config", "uncertainty_report"]
