"""Build weights/ from three finished runs (or shipped weights files): fp16 safetensors, the manifest
and the shipped evaluation.

Every choice (TTA on/off, temperatures, ensemble routing, prior correction, U-Net threshold, the
out-of-distribution threshold) is made on the validation split. The test split is scored once, at the
end, with the exact Predictor code the app and CLI use, loaded back from the fp16 files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from torch import nn

from derm import combination, data, distill, runs
from derm.augment import TTA_VIEWS
from derm.classes import CLASSES
from derm.evaluate import (classifier_probabilities, full_resolution_scores, load_checkpoint_model,
                           predictions_frame, segmenter_probabilities, split_table)
from derm.metrics import batch_dice_iou, classification_report, segmentation_report, selection_score
from derm.maskclean import CHOSEN as CHOSEN_CLEANING
from derm.combination import combine_weighted, frequency_routing
from derm.pipeline import Predictor, average_members, averages_networks, temper
from derm.train import RECIPE_FIELDS, TrainConfig
from derm.uncertainty.calibrate import uncertainty_sections
from derm.weights import load_model, manifest_entry_for_file, save_state_fp16, shipped_config

CV_FOLDS, CV_REPEATS = 5, 3  # how the slots' combination is cross-validated inside validation
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
# TTA views are paid for per view: each is another full pass in every diagnosis. The U-Net's three extra
# views took a full result from about 0.30 s to 0.45 s on one core; each must buy at least this much
# validation Dice (docs/tried.md: a 192x256 U-Net's gained 0.0024 in all, under the 0.003 this asks)
SEGMENTER_TTA_MIN_GAIN_PER_VIEW = 0.001
# the same for each classifier, in validation score (mean of balanced accuracy and macro F1): a ResNet50's
# TTA that gained 0.0005 (less than one melanoma image of 111 moves the score) pushed a full result over
# the app's latency bar (docs/tried.md)
CLASSIFIER_TTA_MIN_GAIN_PER_VIEW = 0.002


def code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=data.REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def training_record(run_dir: Path, config: dict) -> dict:
    """How a model was trained: its run, commands and time here. A warm-started run (--init) adds
    the run it started from, so the time and the commands cover the whole chain."""
    metrics = runs.read_metrics(run_dir)
    earlier = earlier_training_record(run_dir, config)
    if earlier is not None and str(config["init"]).endswith(".safetensors"):
        config = {**config, "init": f"runs/{earlier['run']}"}  # shipped weights are that run's best, in fp16
    record = {"run": Path(run_dir).name, "best_epoch": config["best_epoch"], "epochs": config["epochs"],
              "epochs_run": len(metrics),  # fewer than planned when a run was stopped (e.g. at a GPU's time limit)
              "seconds": round(sum(m["seconds"] for m in metrics), 1),
              "device": runs.read_status(run_dir).get("device", "CPU"),  # runs from before it was recorded ran on the CPU
              "command": command_for(config), "code_version": config.get("code_version") or code_version()}
    if earlier is not None:
        record.update(warm_start_from=earlier["run"], epochs_before=earlier.get("epochs_before", 0) + earlier["epochs"],
                      seconds=round(earlier["seconds"] + record["seconds"], 1),
                      command=f"{earlier['command']}; then {record['command']}")
    return record


def earlier_training_record(run_dir: Path, config: dict) -> dict | None:
    """The training record of what a warm-started run began from: its source run if that is still
    here, else the record copied from the shipped weights' manifest when the run started."""
    copied = Path(run_dir) / runs.INIT_TRAINING_FILE
    if copied.is_file():
        return runs.read_json(copied)
    source = Path(config["init"]) if config.get("init") else None
    if source is not None and (source / "config.json").is_file():
        source_config = {**runs.read_json(source / "config.json"), "best_epoch": runs.read_status(source).get("best_epoch")}
        return training_record(source, source_config)
    return None


def command_for(config: dict) -> str:
    """The `python -m derm train` line that reproduces a config (non-default settings only)."""
    recipe = TrainConfig.from_dict(config)
    if recipe.init and not recipe.init.endswith((".pt", ".safetensors")):  # a run folder: name it as it would be on any machine
        recipe.init = f"runs/{Path(recipe.init).name}"
    if recipe.teacher:  # so are the teachers' run folders
        recipe.teacher = [f"runs/{Path(run).name}" for run in recipe.teacher]
    return " ".join(["python -m derm train", *recipe.cli_args(RECIPE_FIELDS, only_changed=True)])


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising validation NLL of p^(1/T) (temperature scaling on log-probabilities)."""
    def nll(t: float) -> float:
        p = temper(probs, t)
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1)).mean())
    return float(minimize_scalar(nll, bounds=(0.2, 5.0), method="bounded").x)


def load_source(source: Path) -> tuple[nn.Module, dict, dict]:
    """A model to export with its config and training record, from a run folder (its best.pt) or
    from shipped weights (a .safetensors beside its manifest), so one model can be replaced and the
    others re-exported as they are, without the runs that made them."""
    source = Path(source)
    if source.suffix != ".safetensors":
        model, config = load_checkpoint_model(source)
        return model, config, training_record(source, config)
    config = shipped_config(source)
    return load_model(manifest_entry_for_file(source), source.parent), config, config["training"]


def unet_entry(config: dict, record: dict) -> dict:
    """The U-Net's manifest entry before validation chooses its TTA, threshold and cleaning."""
    entry = {"arch": "unet", "file": "unet.safetensors", "width": config["unet_width"],
             "input_hw": [config["height"], config["width"]], "normalization": config["normalization"],
             "threshold": 0.5, "tta": [], "training": record}
    if config.get("encoder", "none") != "none":  # which ImageNet checkpoint it started from, to the byte
        entry["encoder"] = config.get("pretrained") or {"name": config["encoder"]}
    if config.get("extra_masks"):  # its second mask source: a re-export validates on it again
        entry["extra_masks"] = config["extra_masks"]
    return entry


def write_initial_weights(out: Path, classifier_runs: dict[str, Path], unet_run: Path | None,
                          members: dict[str, list[str]] | None = None) -> tuple[dict, dict[str, dict]]:
    """fp16 safetensors and a manifest with neutral settings (T=1, no TTA, frequency routing over the
    slots of `members`, default: each classifier its own slot); also returns each classifier's config
    (split, data folder, teachers), so no model or config is loaded twice."""
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"classes": list(CLASSES), "models": {}, "code_version": code_version()}
    counts, configs = None, {}
    for name, run_dir in classifier_runs.items():
        model, config, record = load_source(run_dir)
        configs[name] = config
        save_state_fp16(model, out / f"{name}.safetensors")
        manifest["models"][name] = {"arch": config["arch"], "file": f"{name}.safetensors",
                                    "input_hw": [config["height"], config["width"]],
                                    "normalization": config["normalization"],
                                    "colour": config.get("colour", "none"), "temperature": 1.0, "tta": [],
                                    "training": record}
        teacher = distill.manifest_teacher(config) or config.get("manifest_teacher")
        if teacher:  # a re-exported shipped student keeps what taught it
            manifest["models"][name]["teacher"] = teacher
        counts = counts or train_class_counts(config)
    if unet_run is not None:
        model, config, record = load_source(unet_run)
        save_state_fp16(model, out / "unet.safetensors")
        manifest["models"]["unet"] = unet_entry(config, record)
    members = members or {name: [name] for name in classifier_runs}
    manifest["ensemble"] = {"routing": frequency_routing(counts, list(members)),
                            "train_class_counts": counts, "prior_correction": 0.0, "ood": None}
    if averages_networks(members):
        manifest["ensemble"]["members"] = members
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest, configs


def train_class_counts(config: dict) -> dict[str, int]:
    split_path = config["split"] if Path(config["split"]).is_absolute() else data.REPO_ROOT / config["split"]
    part = split_table(split_path, config.get("data"), "train")
    return {c: int((part["label"] == c).sum()) for c in CLASSES}


def shipped_segmenter_scores(source: Path | None, limit: int = 0) -> dict | None:
    """A shipped U-Net's manifest entry, scores, validation choices and the split they were measured on,
    when `source` is that U-Net's file beside its manifest and metrics: re-exporting the classifiers alone
    keeps them (if the split is the same) instead of spending a third of the export re-measuring an
    unchanged network. Read before the export may overwrite that folder."""
    if source is None or Path(source).suffix != ".safetensors" or limit:
        return None
    folder = Path(source).parent
    try:
        entry = json.loads((folder / "manifest.json").read_text())["models"]["unet"]
        metrics = json.loads((folder / "metrics.json").read_text())
        kept = {"entry": entry, "scores": metrics["segmenter"], "choices": metrics.get("choices", {}).get("unet", {}),
                "split": (folder / "split.csv").read_bytes()}
    except (OSError, KeyError, ValueError):
        return None
    return kept if entry.get("file") == Path(source).name else None


def export(classifier_runs: dict[str, Path], unet_run: Path | None, out: Path, limit: int = 0,
           score_test: bool = True, members: dict[str, list[str]] | None = None) -> dict:
    """Write weights/ and return metrics.json's content. score_test=False compares candidates on
    validation alone, so the test split is scored once, for the version that ships. `members` groups
    classifiers into ensemble slots whose probabilities are averaged (derm.pipeline.average_members)."""
    splits = ("val", "test") if score_test else ("val",)
    kept_unet = shipped_segmenter_scores(unet_run, limit)
    manifest, configs = write_initial_weights(out, classifier_runs, unet_run, members)
    any_config = next(iter(configs.values()))
    split_path = any_config["split"] if Path(any_config["split"]).is_absolute() else data.REPO_ROOT / any_config["split"]
    shutil.copyfile(split_path, out / "split.csv") if Path(split_path).resolve() != (out / "split.csv").resolve() else None
    parts = {s: split_table(out / "split.csv", any_config.get("data"), s, limit) for s in splits}
    if kept_unet is not None and (kept_unet["split"] != (out / "split.csv").read_bytes()
                                  or not all(s in kept_unet["scores"] for s in splits)):
        kept_unet = None  # measured on another split, or not on every split this export reports: score it again
    predictor = Predictor(out)
    metrics: dict = {"classifiers": {}, "choices": {}}

    # per model: TTA and temperature chosen on validation
    probs: dict[str, dict[str, np.ndarray]] = {s: {} for s in splits}
    for name, clf in predictor.classifiers.items():
        images = {s: data.cached_array(list(p["image_path"]), clf.input_hw, "image") for s, p in parts.items()}
        plain = classifier_probabilities(clf, images["val"])
        clf.tta = TTA_VIEWS[1:]
        with_tta = classifier_probabilities(clf, images["val"])
        y_val = parts["val"]["label_idx"].values
        use_tta = takes_classifier_tta(selection_score(classification_report(y_val, plain)),
                                       selection_score(classification_report(y_val, with_tta)))
        clf.tta = TTA_VIEWS[1:] if use_tta else ()
        val_probs = with_tta if use_tta else plain
        clf.temperature = fit_temperature(val_probs, y_val)
        probs["val"][name] = temper(val_probs, clf.temperature)
        if score_test:
            probs["test"][name] = classifier_probabilities(clf, images["test"])
        entry = manifest["models"][name]
        entry["tta"], entry["temperature"] = list(clf.tta), round(clf.temperature, 4)
        metrics["choices"][name] = {
            "val_score_plain": selection_score(classification_report(y_val, plain)),
            "val_score_tta": selection_score(classification_report(y_val, with_tta)), "tta": use_tta,
            "temperature": entry["temperature"],
            "val_ece_before": classification_report(y_val, val_probs)["ece"],
            "val_ece_after": classification_report(y_val, probs["val"][name])["ece"]}

    # ensemble: each slot the mean of its members; how the slots combine chosen by cross-validation inside validation
    ens = manifest["ensemble"]
    y = {s: parts[s]["label_idx"].values for s in parts}
    member_probs, probs = probs, {s: average_members(probs[s], predictor.members) for s in splits}
    choice = combination.choose(probs["val"], y["val"], predictor.prior, ens["train_class_counts"],
                                slot_sets(list(predictor.members)))
    dropped = drop_unused_slots(manifest, predictor, choice.candidate.slots, out)
    probs = {s: {slot: p for slot, p in probs[s].items() if slot in choice.candidate.slots} for s in splits}
    member_probs = {s: {m: p for m, p in member_probs[s].items() if m in predictor.classifiers} for s in splits}
    ens["weights"], ens["prior_correction"] = choice.weights, choice.candidate.prior_correction
    ens["routing"] = combination.carrying_slot(choice.weights)
    ens["combination"] = {"rule": choice.candidate.kind, "slots": list(choice.candidate.slots),
                          "shrinkage": choice.candidate.shrinkage, "prior_correction": choice.candidate.prior_correction,
                          "criterion": "mean of balanced accuracy and macro F1, then macro AUC",
                          "cross_validation": f"{CV_FOLDS}-fold stratified inside validation, {CV_REPEATS} fold seeds",
                          "dropped_slots": dropped, "candidates": choice.table}
    ood_model = next(iter(predictor.classifiers))
    clf = predictor.classifiers[ood_model]
    val_images = data.cached_array(list(parts["val"]["image_path"]), clf.input_hw, "image")
    energy = np.concatenate([clf.energy(clf.tensor(list(val_images[s:s + 64]))) for s in range(0, len(val_images), 64)])
    ens["ood"] = {"model": ood_model, "energy_threshold": round(float(np.quantile(energy, 0.01)), 4),
                  "rule": "1st percentile of validation energy"}

    ensemble_probs = {s: combine_weighted(probs[s], ens["weights"], predictor.prior, ens["prior_correction"])
                      for s in splits}
    # prediction sets and the malignancy triage point: fitted on validation, every split reported (derm.uncertainty)
    manifest["uncertainty"], metrics["uncertainty"] = uncertainty_sections(ensemble_probs, y, probs)
    for split_name in splits:
        combined = ensemble_probs[split_name]
        metrics["classifiers"][split_name] = {
            **{n: classification_report(y[split_name], p) for n, p in probs[split_name].items()},
            "ensemble": classification_report(y[split_name], combined)}
        if "members" in ens:  # each member model alone, beside the slots the app shows
            metrics.setdefault("members", {})[split_name] = {
                n: classification_report(y[split_name], p) for n, p in member_probs[split_name].items()}
        if split_name == "test":
            frame = predictions_frame(parts["test"], {"ensemble": combined, **probs["test"]})
            frame.to_csv(out / "test_predictions.csv", index=False)

    reference = teacher_reference(configs, manifest, parts, out)
    if reference:
        metrics["teacher"] = reference

    if kept_unet is not None:
        manifest["models"]["unet"], metrics["choices"]["unet"] = kept_unet["entry"], kept_unet["choices"]
        metrics["segmenter"] = {s: kept_unet["scores"][s] for s in splits}
    elif predictor.segmenter is not None:
        source = Path(unet_run) if unet_run is not None else None
        extra_masks = runs.read_json(source / "config.json").get("extra_masks") if source and source.is_dir() else None
        metrics["segmenter"], manifest["models"]["unet"] = export_segmenter(predictor, parts, manifest["models"]["unet"],
                                                                             metrics["choices"], extra_val_set(extra_masks, limit))
    metrics["split_counts"] = data.split_counts(data.attach_split(data.load_table(any_config.get("data")), out / "split.csv"))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def slot_sets(slots: list[str]) -> list[list[str]]:
    """The slot sets the combination is chosen among: the two ResNet slots alone, and with each further
    slot (an ImageNet-pretrained member joins only where cross-validation says it helps)."""
    base = [s for s in slots if s in ("resnet18", "resnet50")] or slots[:2]
    extra = [s for s in slots if s not in base]
    return [base] + ([base + extra] if extra else [])


def drop_unused_slots(manifest: dict, predictor: Predictor, kept: tuple[str, ...], out: Path) -> list[str]:
    """Remove the slots the chosen combination does not use from the manifest, the predictor and `out`:
    a member that does not help costs the app time and every clone its size."""
    dropped = [slot for slot in predictor.members if slot not in kept]
    for slot in dropped:
        for name in predictor.members.pop(slot):
            entry = manifest["models"].pop(name)
            (out / entry["file"]).unlink(missing_ok=True)
            predictor.classifiers.pop(name)
    if "members" in manifest["ensemble"]:
        manifest["ensemble"]["members"] = {s: names for s, names in manifest["ensemble"]["members"].items() if s in kept}
    return dropped


def teacher_runs_of(configs: dict[str, dict]) -> list[Path]:
    """The teacher run folders named in the distilled classifier runs' configs, each once, in order
    (a shipped file's config names none: its teachers' scores are kept from its metrics.json)."""
    found: list[Path] = []
    for config in configs.values():
        for run in config.get("teacher") or []:
            if Path(run) not in found:
                found.append(Path(run))
    return found


def teacher_reference(configs: dict[str, dict], manifest: dict, parts: dict[str, pd.DataFrame],
                      out: Path) -> dict | None:
    """The teachers' own scores (their averaged plain softmax) on each split, for the card's reference row:
    what the students were taught, not what ships. Without the teacher runs here, the scores already in
    `out` are kept when they are of the same teachers."""
    teachers = teacher_runs_of(configs)
    if teachers and all((t / "best.pt").is_file() for t in teachers):
        from derm.run_scores import checkpoint_classifier

        reference: dict = {"runs": [t.name for t in teachers]}
        loaded = [checkpoint_classifier(t) for t in teachers]
        reference["arch"] = "+".join(sorted({config["arch"] for _, config in loaded}))
        for split, part in parts.items():
            probs = [classifier_probabilities(clf, data.cached_array(list(part["image_path"]), clf.input_hw, "image"))
                     for clf, _ in loaded]
            reference[split] = classification_report(part["label_idx"].values, np.mean(probs, axis=0))
        return reference
    named = {r["run"] for e in manifest["models"].values() for r in (e.get("teacher") or {}).get("runs", [])}
    previous = json.loads((out / "metrics.json").read_text()).get("teacher") if (out / "metrics.json").is_file() else None
    return previous if previous and named and set(previous["runs"]) == named else None


def export_unet_only(unet_run: Path, out: Path, limit: int = 0) -> dict:
    """Replace the U-Net of an exported weights folder and re-score it (TTA and threshold chosen on
    validation, both splits at 600x450); the classifiers, their metrics and the domain gate stay,
    byte for byte. Returns the U-Net's part of metrics.json."""
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    model, config, record = load_source(unet_run)
    if "unet" in manifest["models"] and "segmenter" in metrics:
        metrics["previous_segmenter"] = previous_segmenter(manifest["models"]["unet"], metrics["segmenter"], out)
    save_state_fp16(model, out / "unet.safetensors")
    manifest["models"]["unet"] = unet_entry(config, record)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    parts = {s: split_table(out / "split.csv", config.get("data"), s, limit) for s in ("val", "test")}
    extra_val = extra_val_set(config.get("extra_masks"), limit)
    metrics["segmenter"], manifest["models"]["unet"] = export_segmenter(Predictor(out), parts, manifest["models"]["unet"],
                                                                         metrics.setdefault("choices", {}), extra_val)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics["segmenter"]


def previous_segmenter(entry: dict, scores: dict, out: Path) -> dict:
    """What the U-Net being replaced was and scored (HAM10000 splits, and each other set's segmentation in
    external.json, which the next evaluate-set overwrites), so the card can set the two side by side."""
    external_path = out / "external.json"
    external = json.loads(external_path.read_text()) if external_path.is_file() else {}
    return {"encoder": entry.get("encoder", {}).get("name", "none"), "width": entry.get("width"),
            "input_hw": entry["input_hw"], "tta": entry.get("tta", []), "run": entry.get("training", {}).get("run"),
            "scores": scores, "external": {name: e["segmentation"] for name, e in external.items() if "segmentation" in e}}


def choose_segmenter_setting(val_dice: dict[tuple[tuple[str, ...], float], float],
                             min_gain_per_view: float = SEGMENTER_TTA_MIN_GAIN_PER_VIEW) -> tuple[tuple[str, ...], float]:
    """(tta, threshold) with the best validation Dice once each extra view is charged
    `min_gain_per_view` of it: views are taken only where each pays for itself."""
    return max(val_dice, key=lambda k: val_dice[k] - min_gain_per_view * len(k[0]))


def takes_classifier_tta(plain_score: float, tta_score: float, views: int = len(TTA_VIEWS) - 1,
                         min_gain_per_view: float = CLASSIFIER_TTA_MIN_GAIN_PER_VIEW) -> bool:
    """Flipped views for a classifier only when each of the `views` extra views gains at least
    min_gain_per_view of validation score: each is another full pass in the app."""
    return tta_score >= plain_score + min_gain_per_view * views


def extra_val_set(extra_masks: str | None, limit: int = 0) -> tuple[list[str], list[str]] | None:
    """(image paths, mask paths) of the val split of the U-Net's second mask source, if it trained on one."""
    if not extra_masks or not (Path(extra_masks) / "split.csv").is_file():
        return None
    images, masks = data.mask_set_pairs(extra_masks, "val")
    return (images[:limit], masks[:limit]) if limit else (images, masks)


def val_dice_at_input(seg, images: np.ndarray, masks: np.ndarray) -> tuple[dict[float, float], np.ndarray]:
    """Mean Dice at each candidate threshold, and the probability maps, under the segmenter's current TTA."""
    prob = segmenter_probabilities(seg, images)
    return {t: float(batch_dice_iou(prob >= t, np.asarray(masks))[0].mean()) for t in THRESHOLDS}, prob


def export_segmenter(predictor: Predictor, parts: dict[str, pd.DataFrame], entry: dict, choices: dict,
                     extra_val: tuple[list[str], list[str]] | None = None) -> tuple[dict, dict]:
    """U-Net: TTA and threshold chosen on validation Dice (TTA only for a real gain, choose_segmenter_setting);
    both splits scored at 600x450. With `extra_val` (the second mask source's val split, for a U-Net that
    trained on one) the choice is made on the mean of the two validation Dice, each source counting once,
    as training chose its best epoch."""
    seg = predictor.segmenter
    images = {s: data.cached_array(list(p["image_path"]), seg.input_hw, "image") for s, p in parts.items()}
    val_sets = {"ham10000": (images["val"], data.cached_array(list(parts["val"]["mask_path"]), seg.input_hw, "mask"))}
    if extra_val is not None:
        val_sets["extra"] = (data.cached_array(extra_val[0], seg.input_hw, "image"),
                             data.cached_array(extra_val[1], seg.input_hw, "mask"))
    candidates, per_source, ham_val_prob = {}, {}, {}
    for tta in ((), TTA_VIEWS[1:]):
        seg.tta = tta
        scored = {}
        for name, pair in val_sets.items():
            scored[name], prob = val_dice_at_input(seg, *pair)
            if name == "ham10000":
                ham_val_prob[tta] = prob
        for t in THRESHOLDS:
            per_source[(tta, t)] = {name: dice[t] for name, dice in scored.items()}
            candidates[(tta, t)] = float(np.mean(list(per_source[(tta, t)].values())))
    tta, threshold = choose_segmenter_setting(candidates)
    seg.tta, seg.threshold, seg.cleaning = tta, threshold, CHOSEN_CLEANING
    choices["unet"] = {"val_dice_at_input_res": {f"tta={bool(k[0])},t={k[1]}": v for k, v in candidates.items()}}
    if extra_val is not None:
        choices["unet"]["val_dice_at_input_res_per_source"] = {f"tta={bool(k[0])},t={k[1]}": v
                                                               for k, v in per_source.items()}
    entry = {**entry, "tta": list(tta), "threshold": threshold, "cleaning": CHOSEN_CLEANING.to_dict()}
    report = {}
    for split_name, part in parts.items():
        prob = ham_val_prob[tta] if split_name == "val" else segmenter_probabilities(seg, images[split_name])
        dice, iou = full_resolution_scores(prob, list(part["mask_path"]), threshold, CHOSEN_CLEANING)
        report[split_name] = {"resolution": [450, 600], **segmentation_report(dice, iou)}
        if split_name == "val":  # the cleaning rule was chosen on validation (scripts/choose_cleaning.py); its effect here
            raw_dice, _ = full_resolution_scores(prob, list(part["mask_path"]), threshold)
            choices["unet"]["cleaning"] = {"rule": CHOSEN_CLEANING.describe(), "val_dice_without": float(raw_dice.mean()),
                                           "val_dice_with": report[split_name]["dice"]}
    return report, entry
