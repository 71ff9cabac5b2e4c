"""`python -m derm ...`: train, evaluate, predict, segment, export."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

# Building the parser imports nothing heavy (torch, torchvision, cv2, pandas, sklearn, derm.runs): each
# command imports what it uses inside its function, so --help answers at once (tests/test_cold_start.py checks).
from derm.archs import CLASSIFIER_ARCHS, TEACHER_ARCHS
from derm.cli_common import add_image_inputs, images, load_predictor, progress
from derm.colour import METHODS as COLOUR_METHODS
from derm.pretrained import ENCODERS


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier or the segmenter on HAM10000",
                       description="Train on the lesion-grouped train split; each run writes runs/<id>/.")
    p.add_argument("task", choices=["classifier", "segmenter"])
    p.add_argument("--arch", choices=[*CLASSIFIER_ARCHS, *TEACHER_ARCHS], help="classifier architecture (default "
                   "resnet18); lite0|lite1|lite2: an ImageNet-pretrained EfficientNet-Lite, a teacher for the ensemble")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--height", type=int, help="input height in pixels (classifier default 150)")
    p.add_argument("--width", type=int, help="input width in pixels (classifier default 200)")
    p.add_argument("--sampling", choices=["natural", "sqrt", "balanced", "reference"])
    p.add_argument("--augment", help="augmentation policy: full, device (full + other cameras' colour, blur, framing), "
                   "reference, geometric, flips, none")
    p.add_argument("--colour", choices=COLOUR_METHODS, help="classifier: colour constancy after augmentation and "
                   "in the app (default none; shades_of_gray divides out each image's illuminant)")
    p.add_argument("--epoch-samples", type=int, help="images per epoch (default: the train split's size)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--unet-width", type=int, help="segmenter: channels of the from-scratch U-Net (--encoder none)")
    p.add_argument("--encoder", choices=ENCODERS, help="segmenter: the U-Net's encoder, none (from scratch, the "
                   "default) or an ImageNet-pretrained EfficientNet-Lite from its installed package")
    p.add_argument("--extra-masks", help="segmenter: also train (and validate) on this folder in "
                   "isic2018_task1's layout, e.g. ../shared/isic2018_task1")
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="use at most N images per split (quick checks)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--data", help="HAM10000 folder (default: $DERM_DATA, see docs/data.md)")
    p.add_argument("--split", help="split.csv to use or create (default $DERM_SPLIT or weights/split.csv)")
    p.add_argument("--runs", help="folder that holds run folders (default runs/ or $DERM_RUNS)")
    p.add_argument("--run-dir", help="write into this run folder (made by a launcher)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or crashed run from its last.pt")
    p.add_argument("--init", metavar="RUN_DIR", help="warm start: begin from this run's best.pt weights, or "
                   "from shipped weights (weights/resnet50.safetensors), with a fresh optimiser and schedule")
    p.add_argument("--teacher", nargs="+", metavar="RUN", help="classifier: distil these classifier runs' "
                   "softened predictions (averaged) into this one, besides the labels")
    p.add_argument("--distill-temperature", type=float, help="with --teacher: softmax temperature (default 4)")
    p.add_argument("--distill-alpha", type=float, help="with --teacher: weight of the teachers' answers against "
                   "the labels, 0 to 1 (default 0.9)")
    p.add_argument("--unlabelled", metavar="DIR", help="with --teacher: also train on the train images of this "
                   "folder in isic2018_task1's layout, without labels, e.g. ../shared/isic2018_task1")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from derm import runs
    from derm.pretrained import PretrainedWeightsMissing, weights_file
    from derm.train import (TrainConfig, check_init_matches, init_checkpoint, init_source_config, pretrained_name,
                            train)

    if args.runs:
        import os
        os.environ[runs.RUNS_ENV] = args.runs
    if args.resume:
        run_dir = train(None, Path(args.resume), resume=True)  # type: ignore[arg-type]
    else:
        config = TrainConfig.for_task(
            args.task, args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, height=args.height, width=args.width, sampling=args.sampling,
            augment=args.augment, colour=args.colour, epoch_samples=args.epoch_samples, label_smoothing=args.label_smoothing,
            precision="fp32" if args.fp32 else None, unet_width=args.unet_width, seed=args.seed,
            extra_masks=args.extra_masks, encoder=args.encoder,
            limit=args.limit, threads=args.threads, data=args.data, split=args.split, init=args.init,
            teacher=args.teacher, distill_temperature=args.distill_temperature, distill_alpha=args.distill_alpha,
            unlabelled=args.unlabelled)
        try:
            config.validate()
            if config.init and not init_checkpoint(config.init).is_file():
                raise ValueError(f"--init: no checkpoint at {init_checkpoint(config.init)}")
            if config.init:
                check_init_matches(config, init_source_config(config.init))
            elif pretrained_name(config):
                weights_file(pretrained_name(config))  # its package is installed, before a run folder is made
        except (ValueError, FileNotFoundError, PretrainedWeightsMissing) as exc:  # bad settings, --init weights
            # without a manifest, or a pretrained encoder whose package is not installed
            print(f"derm train: {exc}", file=sys.stderr)
            return 2
        run_dir = train(config, Path(args.run_dir) if args.run_dir else None)
    status = runs.read_status(run_dir)
    print(f"run {run_dir}: {status.get('state')}, best epoch {status.get('best_epoch')}")
    return 0 if status.get("state") in ("finished", "stopped") else 1


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a run's best checkpoint on the test split",
                       description="Writes runs/<id>/eval/metrics.json and predictions.csv.")
    p.add_argument("--run", required=True, help="run folder, e.g. runs/20261126-020412-resnet18")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--limit", type=int, default=0, help="score at most N images (quick checks)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from derm.evaluate import evaluate_run

    run_dir = Path(args.run)
    if not (run_dir / "best.pt").is_file():
        print(f"derm evaluate: {run_dir} has no best.pt (has the run finished an epoch?)", file=sys.stderr)
        return 2
    report = evaluate_run(run_dir, args.split, args.limit)
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "dice", "iou", "thresholded_jaccard")
    print(" ".join(f"{k}={report[k]:.4f}" for k in keys if report.get(k) is not None))
    print(f"wrote {run_dir / 'eval' / 'metrics.json'} and predictions.csv")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="build weights/ from finished runs (fp16 safetensors + evaluation)",
                       description="Chooses TTA, temperatures, routing and thresholds on validation, "
                                   "then scores val and test once with the shipped code (--val-only: val alone, "
                                   "to compare candidate runs).")
    p.add_argument("--resnet18", nargs="+", metavar="SOURCE",
                   help="run folder of the ResNet18 (answers frequent classes), or shipped weights "
                   "(weights/resnet18.safetensors) to keep them; several: the slot's members, averaged "
                   "(the first is the one the domain gate reads)")
    p.add_argument("--resnet50", nargs="+", metavar="SOURCE",
                   help="run folder or shipped .safetensors of the ResNet50 (answers rare classes); several: averaged")
    p.add_argument("--efficientnet", nargs="+", metavar="SOURCE",
                   help="run folder or shipped .safetensors of an ImageNet-pretrained EfficientNet-Lite classifier "
                   "(train classifier --arch lite0): a third slot, kept only where cross-validation says it helps")
    p.add_argument("--unet", help="run folder or shipped .safetensors of the U-Net (a shipped one, beside its "
                   "metrics.json and scored on the same split, keeps its scores instead of being measured again)")
    p.add_argument("--out", default="weights")
    p.add_argument("--limit", type=int, default=0, help="use at most N val/test images (quick checks)")
    p.add_argument("--val-only", action="store_true",
                   help="score validation only: compare candidate runs without looking at the test split")
    p.add_argument("--unet-only", action="store_true",
                   help="replace and re-score the U-Net of --out alone; its classifiers, metrics and gate stay")
    p.set_defaults(func=cmd_export)


def slot_sources(sources: dict[str, list[str]]) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Model names and ensemble slots from each slot's sources: the first source of a slot takes the
    slot's name (resnet18), the others are numbered (resnet18_2, resnet18_3)."""
    classifier_runs: dict[str, Path] = {}
    members: dict[str, list[str]] = {}
    for slot, paths in sources.items():
        for k, path in enumerate(paths):
            name = slot if k == 0 else f"{slot}_{k + 1}"
            classifier_runs[name] = Path(path)
            members.setdefault(slot, []).append(name)
    return classifier_runs, members


def cmd_export(args: argparse.Namespace) -> int:
    from derm.export import export, export_unet_only

    if args.unet_only:
        if not args.unet or args.resnet18 or args.resnet50 or args.efficientnet or args.val_only:
            print("derm export: --unet-only takes --unet (and --out), nothing else", file=sys.stderr)
            return 2
        seg = export_unet_only(Path(args.unet), Path(args.out), args.limit)
        for split, rep in seg.items():
            print(f"{split:5s} unet      dice={rep['dice']:.3f} iou={rep['iou']:.3f}")
        return 0
    if not args.resnet18:
        print("derm export: --resnet18 is required (or --unet-only)", file=sys.stderr)
        return 2

    classifier_runs, members = slot_sources({"resnet18": args.resnet18, "resnet50": args.resnet50 or [],
                                             "efficientnet": args.efficientnet or []})
    metrics = export(classifier_runs, Path(args.unet) if args.unet else None, Path(args.out), args.limit,
                     score_test=not args.val_only, members=members)
    for split in metrics["classifiers"]:
        for name, rep in metrics["classifiers"][split].items():
            print(f"{split:5s} {name:9s} acc={rep['accuracy']:.3f} bal_acc={rep['balanced_accuracy']:.3f} "
                  f"macro_f1={rep['macro_f1']:.3f} macro_auc={rep['macro_auc']:.3f}")
        if "segmenter" in metrics:
            seg = metrics["segmenter"][split]
            print(f"{split:5s} unet      dice={seg['dice']:.3f} iou={seg['iou']:.3f}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="class probabilities for images",
                       description="Prints one row per image: a probability per class, the label, "
                                   "prediction_set (the classes, most probable first and joined by |, that hold the "
                                   "true diagnosis for --coverage of HAM10000 validation images), malignancy_score "
                                   "(P(MEL) + P(BCC) + P(AKIEC)), malignancy_flag (true at or above the operating "
                                   "point chosen for 95%% validation sensitivity), in_domain (false when the domain "
                                   "gate finds it is not a dermatoscopic lesion image) and warnings (the gate's "
                                   "reason, joined by ' | '). The three uncertainty columns are empty for weights "
                                   "without a fitted uncertainty section.")
    add_image_inputs(p)
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    from derm.uncertainty.commands import add_coverage_option

    add_coverage_option(p)
    p.set_defaults(func=cmd_predict, exit_fast=True)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="lesion masks for images",
                       description="Writes DIR/<stem>_mask.png (0/255) at each image's own size.")
    add_image_inputs(p)
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.set_defaults(func=cmd_segment, exit_fast=True)


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from derm.classes import CLASSES
    from derm.uncertainty.commands import predict_fields, uncertainty_or_none

    predictor = load_predictor(args.weights)
    if predictor is None:
        return 2
    uncertainty = uncertainty_or_none(predictor.manifest)
    failed, rows = 0, []
    for path, rgb in progress(images(args.paths), len(args.paths), "predict"):
        if rgb is None:
            failed += 1
            continue
        per_model, domains = predictor.model_probabilities_and_domain([rgb])
        combined, slots = predictor.ensemble(per_model)
        domain = domains[0]
        row = {"path": path, **{c: round(float(combined[0, i]), 6) for i, c in enumerate(CLASSES)},
               "label": CLASSES[int(combined[0].argmax())],
               **predict_fields(uncertainty, combined[0], args.coverage, {k: p[0] for k, p in slots.items()}),
               "in_domain": domain is None or domain.in_domain,
               "warnings": " | ".join(_domain_warnings(domain))}
        rows.append(row)
        if args.format == "csv":
            if len(rows) == 1:
                print(",".join(row))
            print(",".join(_csv_cell(v) for v in row.values()), flush=True)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    return 1 if failed else 0


def _domain_warnings(domain) -> list[str]:
    if domain is None or domain.in_domain:
        return []
    return [domain.reason if domain.kind == "small" else f"not a dermatoscopic lesion image: {domain.reason}"]


def _csv_cell(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return '"' + text.replace('"', '""') + '"' if any(ch in text for ch in ',"\n') else text


def cmd_segment(args: argparse.Namespace) -> int:
    import cv2

    predictor = load_predictor(args.weights)
    if predictor is None:
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, rgb in progress(images(args.paths), len(args.paths), "segment"):
        if rgb is None:
            failed += 1
            continue
        for warning in _domain_warnings(predictor.check_domain([rgb])[0]):
            print(f"derm: {path}: {warning} (mask written anyway)", file=sys.stderr)
        mask = predictor.segment(rgb)
        target = out / f"{Path(path).stem}_mask.png"
        cv2.imwrite(str(target), mask.astype("uint8") * 255)
        print(target, flush=True)
    return 1 if failed else 0


def _add_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="write MODEL_CARD.md from the files in weights/")
    p.add_argument("--weights", default="weights")
    p.add_argument("--out", default="MODEL_CARD.md")
    p.set_defaults(func=cmd_card)


def cmd_card(args: argparse.Namespace) -> int:
    from derm.modelcard import render

    try:
        card = render(Path(args.weights))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(card)
    print(f"wrote {args.out}")
    return 0


def _add_fit_gate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-gate", help="fit the domain gate that refuses non-dermatoscopic images",
                       description="Fits weights/gate.json + gate.safetensors on the shipped ResNet18's features "
                                   "(HAM10000 + isic2018_task1 train against clinical photos, photos, screens, "
                                   "blank frames; thresholds from validation). Refit whenever the ResNet18 changes.")
    p.add_argument("--weights", default="weights")
    p.add_argument("--data", help="HAM10000 folder (default: the usual lookup, docs/data.md)")
    p.add_argument("--isic", help="isic2018_task1 folder (default ../shared/isic2018_task1)")
    p.add_argument("--derm7pt", help="derm7pt folder, for its clinical/ photos (default ../shared/derm7pt)")
    p.add_argument("--ham-train-limit", type=int, default=2000, help="HAM10000 train images used (0: all)")
    net = p.add_mutually_exclusive_group()
    net.add_argument("--no-net", action="store_true", help="regression only, without the device network")
    p.add_argument("--net-steps", type=int, help="training steps of the device network (default: NetConfig's)")
    net.add_argument("--keep-net", action="store_true",
                   help="keep the device network in --weights (not retrained): refit the regression and both "
                        "thresholds only, e.g. after the ResNet18 was re-shipped")
    net.add_argument("--objects-only", action="store_true",
                     help="fit only the ImageNet everyday-object check into the gate in --weights; the rest of the "
                          "gate stays (e.g. after an ensemble member other than the ResNet18 was added)")
    net.add_argument("--thresholds-only", action="store_true",
                     help="keep everything the gate in --weights fitted and choose its thresholds again, all "
                          "checks together, on the validation images")
    p.set_defaults(func=cmd_fit_gate)


def _gate_sources(args: argparse.Namespace):
    from derm.gate.fit import GateSources

    defaults = GateSources()
    return GateSources(ham=args.data, isic=Path(args.isic) if args.isic else defaults.isic,
                       derm7pt=Path(args.derm7pt) if args.derm7pt else defaults.derm7pt)


def cmd_fit_gate(args: argparse.Namespace) -> int:
    from derm.data import DataNotFoundError
    from derm.gate.fit import GateFitConfig, fit_gate
    from derm.gate.net import NET_FILE
    from derm.weights import save_state_fp16

    if args.keep_net and args.net_steps:
        print("derm: --net-steps trains a new device network; --keep-net keeps the shipped one: pick one",
              file=sys.stderr)
        return 2
    if args.objects_only:
        return fit_object_check_only(args)
    if args.thresholds_only:
        return fit_thresholds_only(args)
    predictor = load_predictor(args.weights, load_gate=False)  # the gate on disk may be stale: it is refitted
    if predictor is None:
        return 2
    config = GateFitConfig(net=None) if args.no_net else GateFitConfig()
    if config.net is not None and args.net_steps:
        config = dataclasses.replace(config, net=dataclasses.replace(config.net, steps=args.net_steps))
    try:
        params, net, shares = fit_gate(predictor, _gate_sources(args), config, ham_train_limit=args.ham_train_limit,
                                       keep_net_from=Path(args.weights) if args.keep_net else None)
    except (DataNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"derm: {exc}", file=sys.stderr)
        return 2
    params.save(Path(args.weights))
    if net is not None:
        save_state_fp16(net, Path(args.weights) / NET_FILE)
    else:
        (Path(args.weights) / NET_FILE).unlink(missing_ok=True)
    for name, share in shares.items():
        print(f"{name:16s} refused {share:6.1%}")
    print(f"wrote {Path(args.weights) / 'gate.json'} (min probability {params.min_probability:.4f}, "
          f"max distance {params.max_distance:.1f})")
    return 0


def fit_thresholds_only(args: argparse.Namespace) -> int:
    from derm.data import DataNotFoundError
    from derm.gate.fit import refit_thresholds

    predictor = load_predictor(args.weights)
    if predictor is None:
        return 2
    try:
        params, shares = refit_thresholds(predictor, _gate_sources(args), ham_train_limit=args.ham_train_limit)
    except (DataNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"derm: {exc}", file=sys.stderr)
        return 2
    return saved_gate(args, params, shares, "refused", f"per-check share {params.notes['thresholds']['per_check_share']}")


def fit_object_check_only(args: argparse.Namespace) -> int:
    from derm.data import DataNotFoundError
    from derm.gate.fit import add_object_check
    from derm.precision import cpu_has_fast_bf16

    try:
        params, shares = add_object_check(Path(args.weights), _gate_sources(args), ham_train_limit=args.ham_train_limit,
                                          bf16=cpu_has_fast_bf16())
    except (DataNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"derm: {exc}", file=sys.stderr)
        return 2
    return saved_gate(args, params, shares, "refused by the object check",
                      f"object threshold {params.objects['threshold']:.4f}, "
                      f"{len(params.objects['lesion_like'])} lesion-like ImageNet classes")


def saved_gate(args: argparse.Namespace, params, shares: dict[str, float], verb: str, summary: str) -> int:
    """Write a refitted gate's parameters into --weights and print the validation shares it refuses."""
    params.save(Path(args.weights))
    for name, share in shares.items():
        print(f"{name:16s} {verb} {share:6.1%}")
    print(f"wrote {Path(args.weights) / 'gate.json'} ({summary})")
    return 0


def _add_gate_check(sub: argparse._SubParsersAction) -> None:
    from derm.gate.sets import SHOULD_ACCEPT, SHOULD_REFUSE

    p = sub.add_parser("gate-check", help="share of images the domain gate refuses, per folder or named set",
                       description="Runs each image through the app's domain gate and prints, per folder or "
                                   f"named set, the share refused and why. Named sets: {', '.join(SHOULD_ACCEPT)} "
                                   f"(should be accepted); {', '.join(SHOULD_REFUSE)} (should be refused).")
    p.add_argument("folders", nargs="*", help="image folders")
    p.add_argument("--set", dest="sets", action="append", default=[], help="a named set (repeatable) or 'all'")
    p.add_argument("--weights", help="weights folder (default weights/ or $DERM_WEIGHTS)")
    p.add_argument("--data", help="HAM10000 folder")
    p.add_argument("--isic")
    p.add_argument("--derm7pt")
    p.add_argument("--json", help="also write the rows to this JSON file (weights/gate_report.json feeds the card)")
    p.set_defaults(func=cmd_gate_check)


def cmd_gate_check(args: argparse.Namespace) -> int:
    import json

    from derm.data import DataNotFoundError
    from derm.gate.fit import SHOULD_ACCEPT, SHOULD_REFUSE, check_sets

    predictor = load_predictor(args.weights)
    if predictor is None:
        return 2
    names = [*SHOULD_ACCEPT, *SHOULD_REFUSE] if "all" in args.sets else args.sets
    unknown = set(names) - set(SHOULD_ACCEPT) - set(SHOULD_REFUSE)
    if unknown or not (names or args.folders):
        print(f"derm: name folders or sets ({', '.join([*SHOULD_ACCEPT, *SHOULD_REFUSE])}, all)"
              + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""), file=sys.stderr)
        return 2
    try:
        rows = check_sets(predictor, names, args.folders, _gate_sources(args))
    except (DataNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"derm: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in row["reasons"].items())
        refused = "n/a" if row["refused"] is None else f"{row['refused']:.1%}"
        print(f"{row['set']:28s} {row['images']:5d} images  refused {refused:>6s}  {row['expected']:6s}  {reasons}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python -m derm " + " ".join(sys.argv[1:]) if sys.argv else "",
                                               "rows": rows}, indent=1) + "\n")
    return 0


def _add_evaluate_set(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-set", help="score the app's pipeline on any labelled image set (e.g. from another clinic)",
                       description="Classification: --images DIR --labels CSV (image_id,dx; any subset of the 7 "
                                   "classes; metrics over the classes present, per model and for the ensemble). "
                                   "Segmentation: --images DIR --masks DIR (Dice, IoU, thresholded Jaccard at the "
                                   "masks' own size, with and without the mask cleaning); --labels then only "
                                   "picks the images. Same decoding, TTA, routing and mask cleaning as the app.")
    p.add_argument("--images", required=True, help="folder of images named <image_id>.<ext>")
    p.add_argument("--labels", help="CSV with image_id (and dx for classification; split for --split)")
    p.add_argument("--masks", help="folder of reference masks <image_id>_segmentation.png (or _mask.png, .png)")
    p.add_argument("--split", help="keep only the CSV rows whose split column equals this")
    p.add_argument("--weights", help="weights folder (default weights/ or $DERM_WEIGHTS)")
    p.add_argument("--out", help="write the report as JSON here (with --name: merged into this file under NAME)")
    p.add_argument("--name", help="the set's name in --out, e.g. derm7pt (weights/external.json feeds the model card)")
    p.add_argument("--predictions", help="write one row per image (CSV) here")
    p.add_argument("--limit", type=int, default=0, help="score at most N images (quick checks)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_evaluate_set)


def cmd_evaluate_set(args: argparse.Namespace) -> int:
    import json
    import shlex

    from derm import external

    if not args.labels and not args.masks:
        print("derm evaluate-set: give --labels (classification) and/or --masks (segmentation)", file=sys.stderr)
        return 2
    try:
        table = external.read_table(args.labels, args.split, args.limit) if args.labels else None
        if table is None:
            table = external.images_in(Path(args.images)).head(args.limit or None)
        classify = "dx" in table.columns
        if not classify and not args.masks:
            raise ValueError(f"{args.labels} has no dx column: give --masks, or labels with dx")
    except (OSError, ValueError) as exc:
        print(f"derm evaluate-set: {exc}", file=sys.stderr)
        return 2
    predictor = load_predictor(args.weights)
    if predictor is None:
        return 2
    given = (("--images", args.images), ("--labels", args.labels), ("--split", args.split), ("--masks", args.masks),
             ("--weights", args.weights), ("--limit", args.limit or None), ("--out", args.out), ("--name", args.name))
    command = "python -m derm evaluate-set " + " ".join(f"{k} {shlex.quote(str(v))}" for k, v in given if v is not None)
    report: dict = {"images": str(args.images), "labels": args.labels, "masks": args.masks, "split": args.split,
                    "command": command, "code_version": predictor.manifest.get("code_version")}
    frames = []
    try:
        if classify:
            report["classification"], frame = external.evaluate_classification(predictor, args.images, table,
                                                                               args.batch_size)
            frames.append(frame)
            for name, rep in report["classification"]["models"].items():
                recall = " ".join(f"{c}={r:.2f}" for c, r in rep["recall"].items())
                print(f"{name:9s} n={rep['n']} acc={rep['accuracy']:.3f} bal_acc={rep['balanced_accuracy']:.3f} "
                      f"macro_f1={rep['macro_f1']:.3f} macro_auc={_num(rep['macro_auc'])} "
                      f"mel_auc={_num(rep['melanoma_auc'])} recall: {recall}")
            if "uncertainty" in report["classification"]:
                from derm.uncertainty.commands import print_set_report

                print_set_report(report["classification"]["uncertainty"])
        if args.masks:
            report["segmentation"], frame = external.evaluate_segmentation(predictor, args.images, args.masks, table)
            frames.append(frame)
            seg = report["segmentation"]
            for name in ("raw", "cleaned"):
                s = seg[name]
                print(f"unet {name:7s} n={s['n']} dice={s['dice']:.4f} iou={s['iou']:.4f} "
                      f"thresholded_jaccard={s['thresholded_jaccard']:.4f} over={s['false_positive_share']:.3f} "
                      f"under={s['false_negative_share']:.3f}")
            print(f"cleaning: {seg['cleaning_rule']}")
    except ValueError as exc:
        print(f"derm evaluate-set: {exc}", file=sys.stderr)
        return 2
    skipped = [s for part in ("classification", "segmentation") for s in report.get(part, {}).get("skipped", [])]
    for line in skipped:
        print(f"derm: skipped {line}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        content = report
        if args.name:
            content = json.loads(out.read_text()) if out.is_file() else {}
            content[args.name] = report
        out.write_text(json.dumps(content, indent=1) + "\n")
        print(f"wrote {out}" + (f" ({args.name})" if args.name else ""))
    if args.predictions:
        import functools

        merged = functools.reduce(lambda a, b: a.merge(b, on="image_id", how="outer"), frames)
        merged.to_csv(args.predictions, index=False)
        print(f"wrote {args.predictions}")
    return 1 if skipped else 0


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list training runs with their best validation numbers",
                       description="One row per run folder, newest first: settings, progress, best-epoch "
                                   "validation metrics. Compare runs (e.g. an ablation) on validation.")
    p.add_argument("--runs", help="folder that holds run folders (default runs/ or $DERM_RUNS)")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from derm import runs
    from derm.jobs import runs_table

    table = runs_table(runs.list_runs(Path(args.runs) if args.runs else None))
    if table.empty:
        print("no runs found", file=sys.stderr)
        return 1
    table = table.dropna(axis=1, how="all")
    print(table.to_csv(index=False) if args.format == "csv" else table.to_string(index=False, float_format="%.4f"),
          end="" if args.format == "csv" else "\n")
    return 0


def _add_score_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score-runs", help="compare classifier runs (alone and averaged) on HAM10000 val and "
                       "another set's train/valid splits",
                       description="Plain argmax of each run's best checkpoint (no temperature, routing or TTA): "
                                   "what chooses a teacher or a distillation setting. The other set's test split "
                                   "is refused.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="classifier run folders, or shipped networks (weights/resnet18.safetensors)")
    p.add_argument("--images", help="the other set's image folder, e.g. ../shared/derm7pt/images")
    p.add_argument("--labels", help="its CSV with image_id, dx and split, e.g. ../shared/derm7pt/labels.csv")
    p.add_argument("--split", nargs="+", default=["train", "valid"], help="its splits to score (default train valid)")
    p.add_argument("--out", help="also write the scores as JSON here")
    p.set_defaults(func=cmd_score_runs)


def cmd_score_runs(args: argparse.Namespace) -> int:
    from derm import run_scores
    from derm.data import DataNotFoundError

    missing = [r for r in args.runs if not ((Path(r) / "best.pt").is_file() or
                                            (Path(r).suffix == ".safetensors" and Path(r).is_file()))]
    if missing:
        print(f"derm score-runs: no best.pt (or weights file) at {', '.join(missing)}", file=sys.stderr)
        return 2
    if bool(args.images) != bool(args.labels):
        print("derm score-runs: give --images and --labels together", file=sys.stderr)
        return 2
    external = run_scores.ExternalSet(Path(args.images), Path(args.labels), args.split) if args.images else None
    try:
        scores = run_scores.score_runs(args.runs, external)
    except (ValueError, DataNotFoundError, FileNotFoundError) as exc:
        print(f"derm score-runs: {exc}", file=sys.stderr)
        return 2
    for name, parts in scores.items():
        for part, s in parts.items():
            print(f"{name:48s} {part:8s} " + " ".join(f"{k}={v:.4f}" for k, v in s.items() if v is not None))
    if args.out:
        from derm.runs import write_json_atomic

        write_json_atomic(Path(args.out), {"command": "python -m derm " + " ".join(sys.argv[1:]), "scores": scores})
    return 0


def build_parser() -> argparse.ArgumentParser:
    # the installed `derm` command (pyproject.toml) names itself so in its usage lines
    prog = "derm" if Path(sys.argv[0]).name == "derm" else "python -m derm"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from derm.retrieval.cli import add_similar_eval_parser, add_similar_gallery_parser, add_similar_parser

    for add in (_add_train, _add_evaluate, _add_export, _add_predict, _add_segment, _add_card, _add_runs, _add_evaluate_set,
                _add_fit_gate, _add_gate_check, add_similar_parser, add_similar_eval_parser, _add_score_runs):
        add(sub)
    from derm.uncertainty.commands import add_calibrate_parser

    add_calibrate_parser(sub)
    from derm.cli_report import add_report_parser

    add_report_parser(sub)
    add_similar_gallery_parser(sub)
    return parser


def main(argv: list[str] | None = None, exit_fast: bool = False) -> int:
    """Run one command. exit_fast (`python -m derm`): after predict, segment and similar the process ends
    without the interpreter's teardown of torch, ONNX Runtime and the weights, which took about 0.9 s of a
    5 s cold `predict`; their output is flushed and they leave no file open or process running."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    if exit_fast and getattr(args, "exit_fast", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    return code
