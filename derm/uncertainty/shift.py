"""Where the guarantee may not hold: coverage of the prediction sets split by what the app knows about an
image before its label, on any labelled set (evaluate-set): whether the ensemble's slots disagree on
the top class, and the domain gate's dermatoscopic probability. A signal that separates covered from
missed images on another clinic's set is what the page can act on."""

from __future__ import annotations

import numpy as np

from derm.uncertainty.config import UncertaintyConfig
from derm.uncertainty.conformal import slots_disagree


def group_report(member: np.ndarray, y: np.ndarray, mask: np.ndarray) -> dict:
    """Coverage and mean set size of the images in `mask` (None when there are none)."""
    if not mask.any():
        return {"n": 0, "coverage": None, "mean_size": None}
    covered = member[np.arange(len(y)), y][mask]
    return {"n": int(mask.sum()), "coverage": float(covered.mean()), "mean_size": float(member[mask].sum(1).mean())}


def gate_groups(gate_probability: np.ndarray, bins: int = 4) -> dict[str, np.ndarray]:
    """The images in quartiles of the gate's dermatoscopic probability (on this set), lowest first."""
    edges = np.quantile(gate_probability, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges[1:-1], gate_probability, side="right"), 0, bins - 1)
    return {f"gate q{b + 1} ({edges[b]:.3f}-{edges[b + 1]:.3f})": which == b for b in range(bins)}


def shift_report(probs: np.ndarray, y: np.ndarray, config: UncertaintyConfig, slot_probs: dict[str, np.ndarray],
                 gate_probability: np.ndarray | None = None, level: float | None = None) -> dict:
    """Coverage at `level` (default 90%) where the slots agree and where they disagree, and per quartile of
    the gate's probability when given."""
    level = config.level(level)
    y = np.asarray(y, dtype=int)
    disagree = slots_disagree(slot_probs)
    if disagree is None:
        disagree = np.zeros(len(y), dtype=bool)
    member = config.conformal.membership(probs, level, disagree)
    report = {"level": level, "slots_agree": group_report(member, y, ~disagree),
              "slots_disagree": group_report(member, y, disagree)}
    if gate_probability is not None and len(gate_probability) == len(y):
        report["gate"] = {name: group_report(member, y, mask)
                          for name, mask in gate_groups(np.asarray(gate_probability, dtype=float)).items()}
    return report


def gate_columns(domains: list) -> dict[str, np.ndarray] | None:
    """The gate's numbers per image (None when the weights have no gate)."""
    if not domains or any(d is None for d in domains):
        return None
    device = [np.nan if d.device_probability is None else d.device_probability for d in domains]
    return {"in_domain": np.array([d.in_domain for d in domains]),
            "gate_probability": np.array([d.probability for d in domains], dtype=float),
            "gate_device_probability": np.array(device, dtype=float),
            "gate_distance": np.array([d.distance for d in domains], dtype=float)}


def labelled_set_section(manifest: dict, ids: list[str], probs: np.ndarray, y: np.ndarray,
                         slot_probs: dict[str, np.ndarray], domains: list) -> tuple[dict | None, "pd.DataFrame | None"]:
    """evaluate-set's uncertainty part: the report (coverage, sizes, triage, and coverage by slot agreement
    and by the gate's probability) and per-image columns (set, covered, malignancy, gate); (None, None)
    for weights without an uncertainty section."""
    import pandas as pd

    from derm.uncertainty.report import set_frame, uncertainty_report

    config = UncertaintyConfig.from_manifest(manifest)
    if config is None:
        return None, None
    gate = gate_columns(domains)
    device = gate["gate_device_probability"] if gate is not None else None
    gate_probability = device if device is not None and not np.isnan(device).any() else (
        gate["gate_probability"] if gate is not None else None)
    report = {**uncertainty_report(probs, y, config, slot_probs),
              "shift": shift_report(probs, y, config, slot_probs, gate_probability)}
    frame = set_frame(ids, probs, y, config, slot_probs=slot_probs).drop(columns="true")
    for name, values in (gate or {}).items():
        frame[name] = values
    return report, pd.DataFrame(frame)
