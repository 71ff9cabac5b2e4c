"""Fitting and measuring the domain gate (`python -m derm fit-gate`, `python -m derm gate-check`).

Which images play which part, so that no reported number is one the gate was fitted or tuned on:

| kind | fit | thresholds (validation) | reported |
|---|---|---|---|
| dermoscopic | HAM10000 train (2,000), isic2018_task1 train (every 2nd), derm7pt images of the 'fit' share of cases | HAM10000 val, isic2018_task1 val, derm7pt 'val' share | HAM10000 test, isic2018_task1 test, derm7pt 'report' share (and all of derm7pt) |
| clinical | derm7pt clinical/, the 'fit' share of cases | 'val' share | 'report' share (and all of clinical/) |
| photo | crops of Matplotlib's and scikit-learn's sample photos | other crops (other seed) | scikit-image's sample images (never used before) |
| screen | drawn pages (seed 1) | drawn pages (seed 2) | real pages rendered by Chromium, when available; drawn pages (seed 3) |
| blank | drawn frames (seed 1) | seed 2 | seed 3 |

derm7pt's shares (50% fit, 20% val, 30% report) are fixed by a hash of the case id, so they never
move between runs, and a case's dermoscopic and clinical images always share a role. The gate sees
derm7pt's dermoscopic images because clinical photos from the same atlas are its hardest negatives:
fitted without them, it learnt the atlas's look instead of the dermatoscope's and refused 78% of
derm7pt's dermoscopic images (docs/tried.md). The diagnostic classifiers never see derm7pt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from torch import nn
from tqdm import tqdm

from derm import data
from derm.gate import negatives
from derm.gate import net as gate_net
from derm.gate import objects as gate_objects
from derm.gate.domain import (FEATURE_MODEL, GREY_SPREAD, KINDS, STAT_NAMES, DomainGate, GateParams, decide, file_sha256,
                       kind_probabilities, load_net, mahalanobis, regression_inputs)
from derm.gate.thresholds import CheckScores, choose_thresholds, refused
from derm.gate.sets import SHOULD_ACCEPT, SHOULD_REFUSE
from derm.pipeline import Predictor, classifier_input
from derm.weights import to_fp16, to_fp32

Images = list[np.ndarray]


@dataclass(frozen=True)
class GateFitConfig:
    """The gate's recipe; every number is chosen on validation images (see module docstring)."""

    pca_components: int = 64
    accept_val_share: float = 0.99   # the whole gate keeps this share of every validation dermoscopic source
    regularisation: float = 0.3      # inverse L2 strength of the regression
    drawn_per_kind: int = 300        # blank frames, screens and photo crops drawn for fitting
    isic_train_step: int = 2         # every 2nd isic2018_task1 train image
    clinical_fit_share: float = 0.5
    clinical_val_share: float = 0.2  # the rest (30%) is reported
    seed: int = 0
    net: gate_net.NetConfig | None = gate_net.NetConfig()  # the device network; None = regression only


# ----------------------------------------------------------------------------- image sources


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def case_share(name: str, fit_share: float, val_share: float) -> str:
    """'fit', 'val' or 'report' for a file name, fixed by its hash."""
    u = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "fit" if u < fit_share else ("val" if u < fit_share + val_share else "report")


def ham_paths(split: str, data_dir: str | Path | None = None) -> list[str]:
    table = data.attach_split(data.load_table(data_dir), data.REPO_ROOT / "weights" / "split.csv")
    return table.loc[table["split"] == split, "image_path"].tolist()


def isic_paths(root: Path, split: str) -> list[str]:
    return data.mask_set_pairs(root, split)[0]


def folder_paths(folder: Path, share: str | None = None, config: GateFitConfig = GateFitConfig()) -> list[str]:
    paths = sorted(str(p) for p in Path(folder).iterdir()
                   if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
    if share is None:
        return paths
    return [p for p in paths if case_share(Path(p).name, config.clinical_fit_share, config.clinical_val_share) == share]


def skimage_samples() -> Images:
    """scikit-image's bundled sample images (greyscale made RGB); empty without scikit-image."""
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in {".png", ".jpg", ".gif", ".tif"} or path.stem.startswith("multipage"):
            continue
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.ndim not in (2, 3) or min(image.shape[:2]) < 32:
            continue
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8) if image.dtype != np.uint8 else image
        if image.ndim == 2:
            out.append(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
        else:
            out.append(cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB))
    return out


# ----------------------------------------------------------------------------- features


def gate_extractor(predictor: Predictor) -> DomainGate:
    """A gate without fitted parameters: what reads the features from the feature classifier."""
    clf = predictor.classifiers[FEATURE_MODEL]
    return DomainGate(None, clf.model, clf.tensor, clf.bf16)


def features_of(extractor: DomainGate, images: Iterable[np.ndarray], input_hw: tuple[int, int],
                batch_size: int = 32, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(deep, statistics) for images given as arrays or paths, in batches, with a progress bar."""
    deep, stats, batch = [], [], []
    items = list(images)

    def flush() -> None:
        inputs = [classifier_input(im, input_hw) for im in batch]
        d, s = extractor.features(inputs, inputs)
        deep.append(d)
        stats.append(s)
        batch.clear()

    for item in tqdm(items, desc=desc or "features", unit="img", leave=False, disable=not desc):
        batch.append(read_rgb(item) if isinstance(item, (str, Path)) else item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not deep:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return np.concatenate(deep), np.concatenate(stats)


# ----------------------------------------------------------------------------- fitting


def kind_of(key: str) -> str:
    """'dermoscopic/ham' -> 'dermoscopic': fitting sets are keyed by kind, optionally by source."""
    return key.split("/")[0]


def fit_params(fit: dict[str, tuple[np.ndarray, np.ndarray]], val: dict[str, tuple[np.ndarray, np.ndarray]],
               feature_sha256: str, config: GateFitConfig = GateFitConfig()) -> GateParams:
    """PCA + Ledoit-Wolf Mahalanobis on the dermoscopic fit images, a balanced logistic regression
    over all kinds, then provisional thresholds from the validation dermoscopic images alone: each keeps
    `accept_val_share` of every dermoscopic source (keys 'dermoscopic/<source>'), so a small source
    (another atlas) is not outvoted by a large one. fit_gate then chooses every check's threshold
    together (with_joint_thresholds)."""
    deep_pos = np.concatenate([v[0] for k, v in fit.items() if kind_of(k) == "dermoscopic"])
    pca = PCA(n_components=min(config.pca_components, *deep_pos.shape), random_state=config.seed).fit(deep_pos)
    covariance = LedoitWolf().fit(pca.transform(deep_pos))
    params = GateParams(feature_sha256=feature_sha256, pca_mean=pca.mean_, pca_components=pca.components_,
                        maha_precision=covariance.precision_, maha_centre=covariance.location_,
                        scale_mean=np.zeros(1), scale_std=np.ones(1), coef=np.zeros((len(KINDS), 1)),
                        intercept=np.zeros(len(KINDS)), min_probability=0.0, max_distance=np.inf)
    inputs, labels = [], []
    for key, (deep, stats) in fit.items():
        if not len(deep):
            continue
        _, distance = mahalanobis(params, deep)
        inputs.append(regression_inputs(deep, distance, stats))
        labels.append(np.full(len(deep), KINDS.index(kind_of(key))))
    x, y = np.concatenate(inputs), np.concatenate(labels)
    params.scale_mean, params.scale_std = x.mean(0), x.std(0) + 1e-6
    regression = LogisticRegression(C=config.regularisation, class_weight="balanced", max_iter=3000)
    regression.fit((x - params.scale_mean) / params.scale_std, y)
    coef = np.zeros((len(KINDS), x.shape[1]))
    intercept = np.full(len(KINDS), -30.0)  # a kind never seen in fitting is never predicted
    coef[regression.classes_], intercept[regression.classes_] = regression.coef_, regression.intercept_
    params.coef, params.intercept = coef, intercept
    low, high = [], []
    for key, (deep, stats) in val.items():
        if kind_of(key) == "dermoscopic" and len(deep):
            probe = decide(params, deep, stats)
            low.append(np.quantile([d.probability for d in probe], 1 - config.accept_val_share))
            high.append(np.quantile([d.distance for d in probe], config.accept_val_share))
    params.min_probability, params.max_distance = float(min(low)), float(max(high))
    params.notes = {"config": dataclasses.asdict(config), "fit_counts": {k: int(len(v[0])) for k, v in fit.items()},
                    "val_counts": {k: int(len(v[0])) for k, v in val.items()}}
    return params


def net_inputs_of(images: Iterable, size: int) -> np.ndarray:
    """The device network's inputs (N x size x size x 3) for images given as arrays or paths."""
    return np.stack([gate_net.net_input(read_rgb(i) if isinstance(i, (str, Path)) else i, size) for i in images])


def train_device_net(fit: dict[str, list], config: GateFitConfig, progress: bool = True) -> nn.Module:
    """Train the device network on the fitting images: dermatoscopic vs every other kind, each
    source and kind weighted equally. Returned as it will be shipped (weights rounded to fp16), so
    that its threshold is chosen on the very network the app loads."""
    inputs = {k: net_inputs_of(v, config.net.size) for k, v in fit.items() if len(v)}
    images = np.concatenate(list(inputs.values()))
    groups = np.concatenate([[k] * len(v) for k, v in inputs.items()])
    labels = np.array([int(kind_of(g) == "dermoscopic") for g in groups])
    net = gate_net.train_net(images, labels, groups, config.net, progress)
    net.load_state_dict(to_fp32(to_fp16(net.state_dict())))
    return net


def write_json(path: Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def feature_sha(weights_dir: Path, predictor: Predictor) -> str:
    return file_sha256(Path(weights_dir) / predictor.manifest["models"][FEATURE_MODEL]["file"])


# ----------------------------------------------------------------------------- the named sets


@dataclass(frozen=True)
class GateSources:
    """Where the sets live; the defaults are the `../shared/` folders beside the repository."""

    ham: str | None = None  # None: derm.data's usual lookup
    isic: Path = data.REPO_ROOT.parent / "shared" / "isic2018_task1"
    derm7pt: Path = data.REPO_ROOT.parent / "shared" / "derm7pt"


def named_set(name: str, sources: GateSources = GateSources(), config: GateFitConfig = GateFitConfig(),
              thumbnails: Images | None = None) -> list:
    """The images (or their paths) of one named set. The roles are in this module's docstring."""
    if name.startswith("ham_"):
        return ham_paths(name.removeprefix("ham_"), sources.ham)
    if name.startswith("isic_"):
        return isic_paths(sources.isic, name.removeprefix("isic_"))
    if name.startswith("derm7pt"):
        return folder_paths(sources.derm7pt / "images", "report" if name == "derm7pt_report" else None, config)
    if name.startswith("clinical_"):
        share = name.removeprefix("clinical_")
        return folder_paths(sources.derm7pt / "clinical", None if share == "all" else share, config)
    if name == "skimage":
        return skimage_samples()
    kind, seed = {"drawn_screens": ("screen", 3), "drawn_blank": ("blank", 3)}[name]
    return negatives.generate(kind, 200, config.seed + seed, thumbnails)


def fitting_sets(sources: GateSources, config: GateFitConfig, ham_train_limit: int) -> tuple[dict, dict, Images]:
    """({kind: fit images}, {kind: validation images}, thumbnails) as the module docstring lays out."""
    all_train = ham_paths("train", sources.ham)
    picks = np.random.default_rng(config.seed).choice(all_train, min(200, len(all_train)), replace=False)
    thumbnails = [read_rgb(p) for p in picks]  # for the image grids of drawn screens
    ham_train = all_train
    if ham_train_limit and len(all_train) > ham_train_limit:
        ham_train = list(np.random.default_rng(config.seed + 1).choice(all_train, ham_train_limit, replace=False))
    n = config.drawn_per_kind
    fit = {"dermoscopic/ham": ham_train,
           "dermoscopic/isic": isic_paths(sources.isic, "train")[::config.isic_train_step],
           "dermoscopic/derm7pt": folder_paths(sources.derm7pt / "images", "fit", config),
           "clinical": folder_paths(sources.derm7pt / "clinical", "fit", config),
           "photo": negatives.generate("photo", n, config.seed + 1),
           "screen": negatives.generate("screen", n, config.seed + 1, thumbnails),
           "blank": negatives.generate("blank", n, config.seed + 1)}
    val = {"dermoscopic/ham": ham_paths("val", sources.ham),
           "dermoscopic/isic": isic_paths(sources.isic, "val"),
           "dermoscopic/derm7pt": folder_paths(sources.derm7pt / "images", "val", config),
           "clinical": folder_paths(sources.derm7pt / "clinical", "val", config),
           "photo": negatives.generate("photo", n // 3, config.seed + 2),
           "screen": negatives.generate("screen", n // 3, config.seed + 2, thumbnails),
           "blank": negatives.generate("blank", n // 3, config.seed + 2)}
    return fit, val, thumbnails


def kept_device_net(weights_dir: Path, config: GateFitConfig) -> tuple[nn.Module, GateFitConfig]:
    """The device network shipped in weights_dir, and `config` carrying the recipe that trained it (so
    gate.json keeps describing the network it ships with); only the inference setting, flips, is today's."""
    params = GateParams.load(weights_dir)
    if not params.net:
        raise ValueError(f"{weights_dir} has no device network to keep; run fit-gate without --keep-net")
    flips = (config.net or gate_net.NetConfig()).flips
    recipe = dataclasses.replace(gate_net.NetConfig(**params.net), flips=flips)
    return load_net(params, weights_dir), dataclasses.replace(config, net=recipe)


def imagenet_probabilities_of(model: nn.Module, items: list, bf16: bool, desc: str = "", batch_size: int = 32) -> np.ndarray:
    """The ImageNet softmax of images given as arrays or paths, read a batch at a time."""
    out = [gate_objects.imagenet_probabilities(model, [read_rgb(i) if isinstance(i, (str, Path)) else i
                                                       for i in items[start:start + batch_size]], bf16)
           for start in tqdm(range(0, len(items), batch_size), desc=desc or "imagenet", unit="batch", leave=False,
                             disable=not desc)]
    return np.concatenate(out) if out else np.zeros((0, 1000))


def fit_objects(fit_images: dict[str, list], val_images: dict[str, list], bf16: bool = False
                ) -> tuple[gate_objects.ObjectCheckParams, dict[str, float]]:
    """The ImageNet object check: lesion-like classes from every dermatoscopic fit image, the threshold
    from each validation dermatoscopic source; returns it and the validation shares it refuses."""
    model, sha = gate_objects.load_imagenet_net()
    fit = np.concatenate([imagenet_probabilities_of(model, list(v), bf16, f"imagenet fit {k}")
                          for k, v in fit_images.items() if kind_of(k) == "dermoscopic"])
    val = {k: imagenet_probabilities_of(model, list(v), bf16, f"imagenet val {k}") for k, v in val_images.items()}
    params = gate_objects.fit_object_check(fit, {k: p for k, p in val.items() if kind_of(k) == "dermoscopic"}, sha)
    shares = {f"val {k}": float(np.mean(gate_objects.object_scores(p, params.lesion_like)[0] > params.threshold))
              for k, p in val.items()}
    params.notes["val_refused"] = {k: round(v, 4) for k, v in shares.items()}
    return params, shares


def fit_gate(predictor: Predictor, sources: GateSources = GateSources(), config: GateFitConfig = GateFitConfig(),
             ham_train_limit: int = 2000, keep_net_from: Path | None = None
             ) -> tuple[GateParams, nn.Module | None, dict]:
    """Fit the gate for a Predictor's feature classifier and train its device network, or keep the
    network shipped in `keep_net_from` (cheap after a ResNet18 re-ship); the thresholds of all checks are
    then chosen together (`with_joint_thresholds`). Returns the parameters, the network (None when config.net is None) and the validation
    shares refused."""
    net = None
    if keep_net_from is not None:
        net, config = kept_device_net(Path(keep_net_from), config)
    extractor = gate_extractor(predictor)
    input_hw = predictor.classifiers[FEATURE_MODEL].input_hw
    fit_images, val_images, _ = fitting_sets(sources, config, ham_train_limit)
    fit = {k: features_of(extractor, v, input_hw, desc=f"fit {k}") for k, v in fit_images.items()}
    val = {k: features_of(extractor, v, input_hw, desc=f"val {k}") for k, v in val_images.items()}
    params = fit_params(fit, val, feature_sha(predictor.weights_dir, predictor), config)
    if config.net is None:
        net = None
    else:
        net = net if net is not None else train_device_net(fit_images, config)
        params.net = dataclasses.asdict(config.net)
    bf16 = predictor.classifiers[FEATURE_MODEL].bf16
    objects, _ = fit_objects(fit_images, val_images, bf16)
    params.objects = objects.to_dict()
    gate = DomainGate(params, extractor.model, extractor.to_tensor, bf16, net,
                      gate_objects.load_object_check(objects, bf16))
    shares = with_joint_thresholds(gate, val_images, input_hw, config.accept_val_share)
    return params, net, shares


def check_scores_of(gate: DomainGate, items: list, input_hw: tuple[int, int], desc: str = "") -> CheckScores:
    """Every check's score for images given as arrays or paths, through a fitted gate."""
    deep, stats = features_of(gate, items, input_hw, desc=desc)
    _, distance = mahalanobis(gate.params, deep)
    probability = kind_probabilities(gate.params, regression_inputs(deep, distance, stats))[:, 0]
    missing = np.full(len(deep), np.nan)
    device = missing if gate.net is None else gate_net.probabilities(
        gate.net, net_inputs_of(items, gate.params.net["size"]), gate.params.net.get("flips", False))
    objects = missing if gate.objects is None else gate_objects.object_scores(
        imagenet_probabilities_of(gate.objects.model, items, gate.objects.bf16), gate.objects.params.lesion_like)[0]
    grey = stats[:, STAT_NAMES.index("channel_spread")] < GREY_SPREAD
    return CheckScores(probability, distance, device, objects, grey)


def with_joint_thresholds(gate: DomainGate, val_images: dict[str, list], input_hw: tuple[int, int],
                          keep: float) -> dict[str, float]:
    """Set the gate's thresholds together (derm.gate.thresholds) so that the whole gate keeps `keep` of
    every validation dermatoscopic source; returns the share of every validation set it refuses."""
    scores = {k: check_scores_of(gate, list(v), input_hw, desc=f"val {k}") for k, v in val_images.items() if len(v)}
    chosen, share = choose_thresholds({k: s for k, s in scores.items() if kind_of(k) == "dermoscopic"}, keep)
    params = gate.params
    params.min_probability, params.max_distance = chosen.min_probability, chosen.max_distance
    if gate.net is not None:
        params.net_min_probability = chosen.net_min_probability
    if params.objects:
        params.objects["threshold"] = chosen.object_threshold
        gate.objects.params.threshold = chosen.object_threshold
    shares = {f"val {k}": float(refused(s, chosen).mean()) for k, s in scores.items()}
    params.notes["thresholds"] = {"chosen": "together: the whole gate keeps this share of every validation "
                                            "dermatoscopic source", "keep": keep, "per_check_share": round(share, 5)}
    params.notes["val_refused"] = {k: round(v, 4) for k, v in shares.items()}
    return shares


def refit_thresholds(predictor: Predictor, sources: GateSources = GateSources(),
                     config: GateFitConfig = GateFitConfig(), ham_train_limit: int = 2000) -> tuple[GateParams, dict]:
    """Keep everything the shipped gate fitted and choose its thresholds again, together."""
    if predictor.gate is None:
        raise ValueError(f"{predictor.weights_dir} has no domain gate to re-threshold; fit one: python -m derm fit-gate")
    _, val_images, _ = fitting_sets(sources, config, ham_train_limit)
    shares = with_joint_thresholds(predictor.gate, val_images, predictor.classifiers[FEATURE_MODEL].input_hw,
                                   config.accept_val_share)
    return predictor.gate.params, shares


def add_object_check(weights_dir: Path, sources: GateSources = GateSources(), config: GateFitConfig = GateFitConfig(),
                     ham_train_limit: int = 2000, bf16: bool = False) -> tuple[GateParams, dict[str, float]]:
    """Fit the ImageNet object check into the gate shipped in `weights_dir`, leaving the rest of the gate
    as it is (its regression and network read the ResNet18, which an added ensemble member leaves alone)."""
    params = GateParams.load(Path(weights_dir))
    fit_images, val_images, _ = fitting_sets(sources, config, ham_train_limit)
    objects, shares = fit_objects(fit_images, val_images, bf16)
    params.objects = objects.to_dict()
    return params, shares


def check_sets(predictor: Predictor, names: list[str], folders: list[str], sources: GateSources = GateSources(),
               config: GateFitConfig = GateFitConfig(), batch_size: int = 16) -> list[dict]:
    """Per set or folder: images, share refused, and the reasons, through the app's own gate."""
    if predictor.gate is None:
        raise ValueError(f"{predictor.weights_dir} has no domain gate (gate.json); fit one: python -m derm fit-gate")
    rows = []
    thumbnails = None
    if any(n == "drawn_screens" for n in names):
        thumbnails = [read_rgb(p) for p in ham_paths("test", sources.ham)[:200]]
    targets = [(n, named_set(n, sources, config, thumbnails)) for n in names]
    targets += [(str(f), folder_paths(Path(f))) for f in folders]
    for name, items in targets:
        decisions = []
        for start in tqdm(range(0, len(items), batch_size), desc=name, unit="batch", leave=False):
            batch = [read_rgb(i) if isinstance(i, (str, Path)) else i for i in items[start:start + batch_size]]
            decisions += predictor.check_domain(batch)
        reasons = pd.Series([d.kind for d in decisions if not d.in_domain], dtype=str).value_counts().to_dict()
        expected = "accept" if name in SHOULD_ACCEPT else ("refuse" if name in SHOULD_REFUSE else "")
        rows.append({"set": name, "images": len(decisions), "expected": expected,
                     "refused": round(float(np.mean([not d.in_domain for d in decisions])), 4) if decisions else None,
                     "reasons": {k: int(v) for k, v in reasons.items()}})
    return rows
