"""The model card's section on the prediction sets and the malignancy triage, from the weights folder's
files alone: manifest["uncertainty"] (what was fitted), metrics.json["uncertainty"] (HAM10000 val and
test) and external.json (each other set evaluate-set scored)."""

from __future__ import annotations

from derm.uncertainty.levels import DEFAULT_LEVEL

SET_TITLES = {"val": "HAM10000 validation (calibrated the sets, chose the triage point)", "test": "HAM10000 test"}


def _pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _rows(metrics: dict, external: dict | None) -> list[tuple[str, dict]]:
    """(title, uncertainty report) for HAM10000 val and test, then each external set that has one."""
    rows = [(SET_TITLES[s], r) for s, r in (metrics.get("uncertainty") or {}).items() if s in SET_TITLES]
    for name, entry in (external or {}).items():
        report = (entry.get("classification") or {}).get("uncertainty")
        if report:
            rows.append((name, report))
    return rows


def _lowest_class(level: dict) -> str:
    code, entry = min(level["per_class"].items(), key=lambda kv: kv[1]["coverage"])
    return f"{entry['coverage']:.1%} ({code}, n={entry['n']})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *["| " + " | ".join(r) + " |" for r in rows]]


def section_lines(manifest: dict, metrics: dict, external: dict | None) -> list[str]:
    """Markdown lines of the card's section; [] for weights without an uncertainty section."""
    section = manifest.get("uncertainty")
    rows = _rows(metrics, external)
    if not section or not rows:
        return []
    sets, triage = section["sets"], section["triage"]
    widened = {level: sorted(entry.get("widened", {})) for level, entry in sets["levels"].items()}
    penalty = (f"penalty {sets['penalty']:g} per class beyond the first {sets['k_reg']}" if sets["penalty"]
               else "no size penalty")
    grouped = [f"{float(level):.0%}" for level, entry in sets["levels"].items() if entry.get("by_slot_agreement")]
    apart = (" Images on which the ensemble's slots disagree about the top class were under-covered by one "
             "threshold for all, so they get thresholds of their own, calibrated on the validation images whose "
             f"slots disagreed ({', '.join(grouped)}): their sets are wider." if grouped else "")
    choice = section.get("choice", {})
    variant = (f" Which additions to plain split conformal the sets use was chosen on validation by cross-fitting "
               f"({choice['rule']}): **{choice['variant']}**." if choice.get("variant") else "")
    disagree = section.get("val", {}).get(f"{DEFAULT_LEVEL:g}", {}).get("coverage_slots_disagree")
    told = (f" Images on which the ensemble's slots disagree are not calibrated apart: at {DEFAULT_LEVEL:.0%} their "
            f"validation sets held the truth for {disagree:.1%}, and the page says for such an image that the stated "
            "coverage may not hold." if not grouped and disagree is not None and disagree < DEFAULT_LEVEL else "")
    lines = ["## How sure: prediction sets and malignancy triage", "",
             "Beside its top class the app gives a **prediction set**: the diagnoses that, together, held the true one "
             "for a chosen share (80%, 90% or 95%) of the HAM10000 validation images. Split conformal prediction "
             f"calibrated on the {sets['n_calibration']} validation images with an adaptive score (RAPS, {penalty}, "
             f"chosen by the smallest held-out set size): easy images get one class, hard ones several.{variant}{apart}"
             + (" Classes the sets under-covered on validation are added wherever their "
                "probability reaches a per-class minimum, so each reaches the level by itself ("
                + "; ".join(f"{float(level):.0%}: {', '.join(codes) or 'none'}" for level, codes in widened.items())
                + ")." if any(widened.values()) else "")
             + f"{told} The guarantee needs images like the calibration images; on other clinics' images it is "
             "measured below, not promised.", ""]
    lines += _table(["evaluation set", "level", "coverage", "mean set size", "lowest class coverage"],
                    [[title, f"{float(level):.0%}", _pct(lv["coverage"]), f"{lv['mean_size']:.2f}", _lowest_class(lv)]
                     for title, report in rows for level, lv in report["levels"].items()])
    default = f"{DEFAULT_LEVEL:g}"
    lines += ["", f"Coverage per class at {DEFAULT_LEVEL:.0%}:", ""]
    classes = sorted({c for _, report in rows for c in report["levels"][default]["per_class"]})
    lines += _table(["evaluation set", *classes],
                    [[title, *[_pct(report["levels"][default]["per_class"].get(c, {}).get("coverage")) for c in classes]]
                     for title, report in rows])
    lines += ["", "**Malignancy triage**: the score P(MEL) + P(BCC) + P(AKIEC) (malignant and pre-malignant classes) "
              f"at or above {triage['threshold']:.3f} raises the higher-concern level; the point was chosen for "
              f"{triage['target_sensitivity']:.0%} sensitivity on HAM10000 validation. A research demo's operating "
              "point, not a screening tool.", ""]
    lines += _table(["evaluation set", "sensitivity", "specificity", "malignant", "benign", "AUC"],
                    [[title, _pct(r["triage"]["sensitivity"]), _pct(r["triage"]["specificity"]),
                      str(r["triage"]["n_malignant"]), str(r["triage"]["n_benign"]),
                      "–" if r["triage"].get("auc") is None else f"{r['triage']['auc']:.3f}"] for title, r in rows])
    lines += shift_lines(rows)
    return [*lines, ""]


def shift_lines(rows: list[tuple[str, dict]]) -> list[str]:
    """Where the coverage drops on other sets, and whether the slots' disagreement says so beforehand."""
    test = next((r for title, r in rows if title == SET_TITLES["test"]), None)
    lines = []
    default = f"{DEFAULT_LEVEL:g}"
    for title, report in rows:
        if title in SET_TITLES.values() or "shift" not in report:
            continue
        shift, level = report["shift"], report["levels"][default]
        drop = "" if test is None else \
            f", against {test['levels'][default]['coverage']:.1%} on the HAM10000 test split"
        lines.append(f"- **{title}**: {DEFAULT_LEVEL:.0%} sets held the truth for {level['coverage']:.1%}{drop}; "
                     f"where the ensemble's slots agreed on the top class {_pct(shift['slots_agree']['coverage'])} "
                     f"(n={shift['slots_agree']['n']}), where they disagreed {_pct(shift['slots_disagree']['coverage'])} "
                     f"(n={shift['slots_disagree']['n']}).")
    return ["", "Where the guarantee does not hold (other clinics):", "", *lines] if lines else []
