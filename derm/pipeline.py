"""From an image to one result: ensemble probabilities, per-model probabilities, lesion mask,
measurements and warnings. The CLI prints it, the app draws it, evaluation runs through it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import cache, cached_property, partial
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from derm import lesion
from derm.augment import normalize, uint8_to_float, view
from derm.classes import CLASSES, NUM_CLASSES
from derm.colour import apply_constancy
from derm.combination import carrying_slot, combine_weighted, routing_weights
from derm.data import resize_rgb
from derm.gate.domain import (FEATURE_MODEL, MIN_JUDGED_SIDE, DomainGate, GateDecision, has_gate, layer_statistics,
                              load_net, load_params_for)
from derm.gate.objects import ObjectCheckParams, load_object_check
from derm.maskclean import NONE as NO_CLEANING
from derm.maskclean import CleanConfig
from derm.maskclean import clean as clean_mask
from derm.precision import cpu_has_fast_bf16
from derm.runtime import BuiltOnFirstUse, OnnxTapped, Tapped, onnx_tapped, tap_names, wants_onnx
from derm.weights import default_weights_dir, load_model, read_manifest

LOW_CONFIDENCE = 0.5
MASK_EMPTY, MASK_FULL = 0.01, 0.90
CAM_CACHE_IMAGES = 4  # recent diagnoses whose Grad-CAM layer outputs are kept (under 1 MB each)


def image_key(rgb: np.ndarray) -> str:
    """A digest of the pixels: which recent diagnosis an image belongs to (about 1 ms for 600x450)."""
    return hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).hexdigest() + str(rgb.shape)


def to_landscape(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """Portrait photos are turned 90 degrees: the models were trained on 4:3 landscape images."""
    if rgb.shape[0] > rgb.shape[1]:
        return np.ascontiguousarray(np.rot90(rgb)), True
    return rgb, False


def crop_box(height: int, width: int, aspect_w_over_h: float) -> tuple[int, int, int, int]:
    """(y0, x0, crop height, crop width) of the centred crop to this aspect: one function for
    classifier_input and heat_to_image, so a heat map goes back onto exactly the pixels that were seen."""
    if width / height > aspect_w_over_h:  # too wide
        new_w = round(height * aspect_w_over_h)
        return 0, (width - new_w) // 2, height, new_w
    new_h = round(width / aspect_w_over_h)
    return (height - new_h) // 2, 0, new_h, width


def center_crop_to_aspect(rgb: np.ndarray, aspect_w_over_h: float) -> np.ndarray:
    y0, x0, crop_h, crop_w = crop_box(*rgb.shape[:2], aspect_w_over_h)
    return rgb[y0:y0 + crop_h, x0:x0 + crop_w]


def classifier_input(rgb: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Landscape, centre-cropped to the training aspect (no stretching), resized like HAM10000."""
    rgb, _ = to_landscape(rgb)
    return resize_rgb(center_crop_to_aspect(rgb, input_hw[1] / input_hw[0]), input_hw)


def _to_tensor(batch_hwc: np.ndarray, norm: dict, colour: str = "none") -> torch.Tensor:
    x = apply_constancy(uint8_to_float(torch.from_numpy(np.array(batch_hwc))), colour)
    return normalize(x, tuple(norm["mean"]), tuple(norm["std"])).contiguous(memory_format=torch.channels_last)


@dataclass
class ClassifierModel:
    """A trained classifier with its preprocessing, temperature and test-time augmentation."""

    name: str
    network: nn.Module | Callable[[], nn.Module]  # the PyTorch network, or how to build it on first use
    input_hw: tuple[int, int]
    normalization: dict
    temperature: float = 1.0
    tta: tuple[str, ...] = ()
    bf16: bool = True  # bf16 autocast: ~1.6x faster on CPUs with Intel AMX (derm.precision)
    colour: str = "none"  # the colour constancy it was trained with (derm.colour)
    onnx: OnnxTapped | None = None  # the same pass through ONNX Runtime (derm.runtime); None: PyTorch

    model = BuiltOnFirstUse()  # derm.runtime: from `network` when first read

    @cached_property
    def tapped(self) -> Tapped:
        return Tapped(self.model)

    @property
    def taps(self) -> tuple[str, ...]:
        """The names of the maps run() returns after the logits and pooled features."""
        return self.onnx.tap_names if self.onnx is not None else tap_names(self.model)

    def tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        return _to_tensor(np.stack([classifier_input(im, self.input_hw) for im in images]), self.normalization,
                          self.colour)

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One pass: logits, pooled features and the tapped maps (derm.runtime.Tapped), in float32."""
        if self.onnx is not None:
            return self.onnx(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return tuple(t.float() for t in self.tapped(x))

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Mean softmax over the TTA views, then tempered: p^(1/T), renormalised."""
        return self.outputs(x)[0]

    @torch.no_grad()
    def probabilities_and_features(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """probabilities() and, from the same forward pass, the identity view's pooled features (the
        input to `fc`, N x C): what derm.similar retrieves with, at no extra cost."""
        return self.outputs(x)[:2]

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
        """probabilities_and_features() and the identity view's tapped maps (the domain gate's layers,
        Grad-CAM's layer) with its logits under "logits". A single image's views go through as one batch."""
        views = [x] + [view(x, v) for v in self.tta]
        if len(views) > 1 and x.shape[0] == 1:
            logits, pooled, *maps = self.run(torch.cat(views))
            softmaxes = list(logits.softmax(1).split(1))
        else:
            logits, pooled, *maps = self.run(x)
            softmaxes = [logits.softmax(1)] + [self.run(v)[0].softmax(1) for v in views[1:]]
        n = x.shape[0]
        taps = {name: m[:n] for name, m in zip(self.taps, maps)} | {"logits": logits[:n]}
        return temper(torch.stack(softmaxes).mean(0).numpy(), self.temperature), pooled[:n].numpy(), taps

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        """The pooled features alone (identity view, no TTA): for building a retrieval gallery."""
        return self.run(x)[1].numpy()

    @torch.no_grad()
    def energy(self, x: torch.Tensor) -> np.ndarray:
        """logsumexp of the logits: low for inputs unlike the training images (Liu et al. 2020)."""
        return torch.logsumexp(self.run(x)[0], 1).numpy()

    @staticmethod
    def energy_of_logits(logits: torch.Tensor) -> np.ndarray:
        """energy() from the logits of a pass that already ran (outputs()'s "logits")."""
        return torch.logsumexp(logits.float(), 1).numpy()


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=1, keepdims=True)


def average_members(per_model: dict[str, np.ndarray], members: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Each ensemble slot's probabilities: the mean of its member models' (tempered) probabilities.

    A slot ("resnet18", "resnet50") is what routing names and the app shows; its members are networks
    of that architecture trained differently (e.g. with and without colour constancy), whose errors
    differ, so their mean holds up better on both HAM10000 and other clinics' images (docs/tried.md).
    """
    return {slot: np.mean([per_model[m] for m in names], axis=0) for slot, names in members.items()}


def averages_networks(members: dict[str, list[str]]) -> bool:
    """True when some slot averages two or more networks (then each is also reported alone)."""
    return any(len(names) > 1 for names in members.values())


def ensemble_members(manifest: dict) -> dict[str, list[str]]:
    """The manifest's slots and their member models; without `ensemble.members`, each classifier is
    its own slot (weights exported before members existed)."""
    members = manifest["ensemble"].get("members")
    if members:
        return {slot: list(names) for slot, names in members.items()}
    return {name: [name] for name, entry in manifest["models"].items() if entry["arch"] != "unet"}


def slot_weights(manifest: dict, slots: list[str]) -> dict[str, dict[str, float]]:
    """The manifest's per-class weights over the slots (`ensemble.weights`); weights exported before
    there were any route each class wholly to one slot (`ensemble.routing`)."""
    ens = manifest["ensemble"]
    return ens.get("weights") or routing_weights(ens["routing"], slots)


@dataclass
class SegmenterModel:
    network: nn.Module | Callable[[], nn.Module]  # the PyTorch U-Net, or how to build it on first use
    input_hw: tuple[int, int]
    normalization: dict
    threshold: float = 0.5
    tta: tuple[str, ...] = ()
    bf16: bool = True
    cleaning: CleanConfig = NO_CLEANING  # derm.maskclean: one lesion, not the vignette (manifest `cleaning`)
    onnx: OnnxTapped | None = None  # the same network through ONNX Runtime (derm.runtime); None: PyTorch

    model = BuiltOnFirstUse()  # derm.runtime: from `network` when first read

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            return self.onnx(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x).float()

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lesion probability, N x H x W at input_hw, from uint8 images already at input_hw."""
        x = _to_tensor(images, self.normalization)
        views = ("identity", *self.tta) if self.tta else ("identity",)
        probs = torch.stack([view(torch.sigmoid(self.logits(view(x, v))), v) for v in views]).mean(0)
        return probs[:, 0].numpy()

    def mask(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cleaned binary mask and probability map at the image's own size (the whole image, no crop)."""
        landscape, rotated = to_landscape(rgb)
        prob = self.probabilities(resize_rgb(landscape, self.input_hw)[None])[0]
        prob = cv2.resize(prob, (landscape.shape[1], landscape.shape[0]), interpolation=cv2.INTER_LINEAR)
        if rotated:
            prob = np.ascontiguousarray(np.rot90(prob, k=-1))
        return clean_mask(prob >= self.threshold, self.cleaning), prob


@dataclass
class Result:
    """Everything known about one image; probabilities are dicts keyed by class code."""

    probabilities: dict[str, float]
    per_model: dict[str, dict[str, float]]
    source: dict[str, str]
    label: str
    confidence: float
    mask: np.ndarray | None = None
    lesion: dict | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    domain: GateDecision | None = None  # the domain gate's verdict; None when the weights have no gate
    features: dict[str, np.ndarray] | None = None  # each classifier's pooled features (derm.similar)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # {class: {slot: weight}} of the mix
    prior_correction: float = 0.0  # each mixed score was divided by the class's training share to this power

    @property
    def in_domain(self) -> bool:
        """False when the gate refused the image: the numbers above are then not to be trusted."""
        return self.domain is None or self.domain.in_domain

    def row(self) -> dict:
        return {**{c: round(self.probabilities[c], 6) for c in CLASSES}, "label": self.label,
                "confidence": round(self.confidence, 6), "in_domain": self.in_domain}


class Predictor:
    """Loads the shipped weights once; safe to share between browser sessions: every use of the
    classifiers takes one lock, since Grad-CAM's hooks would otherwise record another browser session's pass."""

    def __init__(self, weights_dir: str | Path | None = None, bf16: bool | None = None, load_gate: bool = True):
        """load_gate=False leaves the domain gate out: for refitting it after the ResNet18 changed, when
        the gate on disk no longer matches and would be refused."""
        self.weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
        bf16 = cpu_has_fast_bf16() if bf16 is None else bf16  # None: wherever it is native
        self.bf16 = bf16
        self.manifest = read_manifest(self.weights_dir)
        if list(self.manifest["classes"]) != list(CLASSES):
            raise ValueError(f"{self.weights_dir}: class order {self.manifest['classes']} is not {CLASSES}")
        self.classifiers: dict[str, ClassifierModel] = {}
        onnx = wants_onnx(bf16)
        for name, entry in self.manifest["models"].items():
            if entry["arch"] == "unet":
                continue
            build, input_hw = cache(partial(load_model, entry, self.weights_dir)), tuple(entry["input_hw"])
            graph = onnx_tapped(build, self.weights_dir / entry["file"], input_hw) if onnx else None
            self.classifiers[name] = ClassifierModel(
                name, build if onnx else build(), input_hw, entry["normalization"], entry.get("temperature", 1.0),
                tuple(entry.get("tta", ())), bf16, entry.get("colour", "none"), graph)
        ens = self.manifest["ensemble"]
        self.members = ensemble_members(self.manifest)
        self.weights = slot_weights(self.manifest, list(self.members))  # {class: {slot: weight}}
        self.routing: dict[str, str] = carrying_slot(self.weights)  # the slot that carries most of each class
        counts = np.array([ens["train_class_counts"][c] for c in CLASSES], dtype=float)
        self.prior = counts / counts.sum()
        self.prior_correction = float(ens.get("prior_correction", 0.0))
        self.ood = ens.get("ood")
        seg = self.manifest["models"].get("unet")
        self.segmenter = self._load_segmenter(seg, bf16, onnx) if seg else None
        self.gate = self._load_gate() if load_gate else None
        self._lock = threading.RLock()
        self._cam_cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def _load_segmenter(self, entry: dict, bf16: bool, onnx: bool) -> SegmenterModel:
        build, input_hw = cache(partial(load_model, entry, self.weights_dir)), tuple(entry["input_hw"])
        graph = onnx_tapped(build, self.weights_dir / entry["file"], input_hw, tapped=False) if onnx else None
        return SegmenterModel(build if onnx else build(), input_hw, entry["normalization"], entry.get("threshold", 0.5),
                              tuple(entry.get("tta", ())), bf16, CleanConfig.from_dict(entry.get("cleaning")), graph)

    def _load_gate(self) -> DomainGate | None:
        """The domain gate beside the weights (gate.json), bound to the classifier it was fitted on."""
        if not has_gate(self.weights_dir) or FEATURE_MODEL not in self.classifiers:
            return None
        feature_file = self.weights_dir / self.manifest["models"][FEATURE_MODEL]["file"]
        clf = self.classifiers[FEATURE_MODEL]
        params = load_params_for(self.weights_dir, feature_file)
        objects = load_object_check(ObjectCheckParams.from_dict(params.objects), clf.bf16)
        # a diagnosis hands the gate the layer statistics of its own pass (check_domain): the network is only
        # built for the gate's own checks (fit-gate, gate-check)
        return DomainGate(params, lambda: clf.model, clf.tensor, clf.bf16, load_net(params, self.weights_dir), objects)

    def check_domain(self, images: list[np.ndarray], deep: np.ndarray | None = None) -> list[GateDecision | None]:
        """The gate's verdict per image (None for each when these weights have no gate); `deep`: the
        feature classifier's layer statistics when its pass already ran (derm.gate.domain.layer_statistics)."""
        if self.gate is None:
            return [None] * len(images)
        clf = self.classifiers[FEATURE_MODEL]
        inputs = [classifier_input(im, clf.input_hw) for im in images]
        with self._lock:
            if deep is None:
                _, _, *maps = clf.run(clf.tensor(images))
                deep = layer_statistics(dict(zip(clf.taps, maps)))
            return self.gate.check(images, inputs, deep)

    # -- classification

    def classify(self, images: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Ensemble probabilities (N x 7) and each slot's own (the mean of its members), for RGB uint8
        images of any size."""
        return self.ensemble(self.model_probabilities(images))

    def ensemble(self, per_model: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """From every classifier's probabilities: the ensemble's and each slot's (mean of its members)."""
        slots = average_members(per_model, self.members)
        return combine_weighted(slots, self.weights, self.prior, self.prior_correction), slots

    def model_probabilities(self, images: list[np.ndarray], features: dict[str, np.ndarray] | None = None,
                            taps: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, np.ndarray]:
        """Every classifier's tempered probabilities (N x 7), members of a slot separately; when dicts
        `features` and `taps` are given, each classifier's pooled features and tapped maps from the same
        pass go into them."""
        per_model = {}
        for name, clf, x in self._classifier_inputs(images):
            with self._lock:
                per_model[name], pooled, maps = clf.outputs(x)
            if features is not None:
                features[name] = pooled
            if taps is not None:
                taps[name] = maps
        return per_model

    def model_probabilities_and_domain(self, images: list[np.ndarray]
                                       ) -> tuple[dict[str, np.ndarray], list[GateDecision | None]]:
        """model_probabilities() and check_domain() from one pass: the gate reads the feature classifier's
        layers of the diagnosis's own pass (as analyse() does) instead of running that network again."""
        taps: dict[str, dict[str, torch.Tensor]] = {}
        per_model = self.model_probabilities(images, taps=taps)
        deep = layer_statistics(taps[FEATURE_MODEL]) if self.gate is not None else None
        return per_model, self.check_domain(images, deep)

    def model_features(self, images: list[np.ndarray], names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Every classifier's (or the named ones') pooled features, identity view only: what a retrieval
        gallery stores."""
        features = {}
        for name, clf, x in self._classifier_inputs(images, names):
            with self._lock:
                features[name] = clf.features(x)
        return features

    def _classifier_inputs(self, images: list[np.ndarray], names: tuple[str, ...] | None = None
                           ) -> Iterator[tuple[str, ClassifierModel, torch.Tensor]]:
        """Each classifier (or each named one) with its input batch; networks with the same preprocessing
        share one tensor."""
        tensors: dict[tuple, torch.Tensor] = {}
        for name, clf in self.classifiers.items():
            if names is not None and name not in names:
                continue
            key = (clf.input_hw, tuple(clf.normalization["mean"]), tuple(clf.normalization["std"]), clf.colour)
            if key not in tensors:
                tensors[key] = clf.tensor(images)
            yield name, clf, tensors[key]

    def analyse(self, rgb: np.ndarray, with_mask: bool = True) -> Result:
        """Classify, segment, measure and warn for one RGB uint8 image."""
        t0 = time.perf_counter()
        features: dict[str, np.ndarray] = {}
        taps: dict[str, dict[str, torch.Tensor]] = {}  # the gate and Grad-CAM read this pass's maps
        combined, per_model = self.ensemble(self.model_probabilities([rgb], features, taps))
        self._remember_cam_maps(rgb, taps)
        t1 = time.perf_counter()
        deep = layer_statistics(taps[FEATURE_MODEL]) if self.gate is not None else None
        domain = self.check_domain([rgb], deep)[0]
        tg = time.perf_counter()
        probs = {c: float(combined[0, i]) for i, c in enumerate(CLASSES)}
        label = max(probs, key=probs.get)
        result = Result(probabilities=probs,
                        per_model={m: {c: float(p[0, i]) for i, c in enumerate(CLASSES)} for m, p in per_model.items()},
                        source=dict(self.routing), label=label, confidence=probs[label],
                        seconds={"gate": tg - t1, "classify": t1 - t0}, domain=domain,
                        features={name: f[0] for name, f in features.items()},
                        weights=self.weights, prior_correction=self.prior_correction)
        if with_mask and self.segmenter is not None:
            result.mask, _ = self.segmenter.mask(rgb)
            result.lesion = lesion.measure(rgb, result.mask)
            result.seconds["segment"] = time.perf_counter() - tg
        ood_logits = taps.get(self.ood["model"], {}).get("logits") if self.ood else None
        result.warnings = self._warnings(rgb, result, ood_logits)
        return result

    def _warnings(self, rgb: np.ndarray, result: Result, ood_logits: torch.Tensor | None = None) -> list[str]:
        """What the user should know beside the answer; `ood_logits`: the out-of-distribution model's
        logits from the diagnosis's own pass (else it runs once more)."""
        warnings = []
        too_small = min(rgb.shape[:2]) < MIN_JUDGED_SIDE
        if too_small:  # the size is the first thing to say: nothing else can be judged at 8x8 pixels
            warnings.append(f"The image is tiny ({rgb.shape[1]}x{rgb.shape[0]}); the models expect about 200x150 or more.")
        if result.domain is not None and not result.domain.in_domain and result.domain.kind != "small":
            warnings.append(f"Not a dermatoscopic lesion image? {result.domain.reason}")
        if result.confidence < LOW_CONFIDENCE:
            warnings.append(f"Low confidence: the top class has only {result.confidence:.0%}.")
        tops = {m: max(p, key=p.get) for m, p in result.per_model.items()}
        if len(set(tops.values())) > 1:
            warnings.append("The models disagree: " + ", ".join(f"{m} says {t}" for m, t in tops.items()) + ".")
        if result.lesion is not None:
            share = result.lesion["area_fraction"]
            if share < MASK_EMPTY:
                warnings.append("No lesion found by the segmenter: is this a dermatoscopic image of a lesion?")
            elif share > MASK_FULL:
                warnings.append("The 'lesion' covers almost the whole image: this may not be a dermatoscopic "
                                "close-up, or the lesion is larger than the field of view.")
        if self.ood:
            clf = self.classifiers[self.ood["model"]]
            with self._lock:
                energy = float((clf.energy(clf.tensor([rgb])) if ood_logits is None else clf.energy_of_logits(ood_logits))[0])
            if energy < self.ood["energy_threshold"]:
                warnings.append("This image looks unlike the training images (out-of-distribution score "
                                f"{energy:.2f} < {self.ood['energy_threshold']:.2f}); treat the result with suspicion.")
        return warnings

    def _remember_cam_maps(self, rgb: np.ndarray, taps: dict[str, dict[str, torch.Tensor]]) -> None:
        """Keeps each classifier's Grad-CAM map of this image's pass, so that its heat maps need no second
        forward pass (derm.explain)."""
        key = image_key(rgb)
        with self._lock:
            self._cam_cache[key] = {**self._cam_cache.get(key, {}),
                                    **{name: maps[self.classifiers[name].taps[-1]][:1] for name, maps in taps.items()}}
            self._cam_cache.move_to_end(key)
            while len(self._cam_cache) > CAM_CACHE_IMAGES:
                self._cam_cache.popitem(last=False)

    def _cam_activation(self, rgb: np.ndarray, name: str) -> torch.Tensor:
        """The network's Grad-CAM map for this image: from its diagnosis when recent, else one forward
        pass (no backward pass through the network either way)."""
        with self._lock:
            cached = self._cam_cache.get(image_key(rgb), {}).get(name)
            if cached is not None:
                return cached
            clf = self.classifiers[name]
            _, _, *maps = clf.run(clf.tensor([rgb]))
            self._remember_cam_maps(rgb, {name: dict(zip(clf.taps, maps))})
            return self._cam_cache[image_key(rgb)][name]

    # -- segmentation and explanation

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        if self.segmenter is None:
            raise RuntimeError("these weights have no segmenter (unet) entry")
        return self.segmenter.mask(rgb)[0]

    def gradcam(self, rgb: np.ndarray, class_name: str, model_name: str | None = None) -> np.ndarray:
        """Grad-CAM heat map in [0, 1] at the image's size for `class_name`, from the slot that
        supplies that class's score in the ensemble (or `model_name`, a slot or one model): the mean of
        its members' maps, rescaled to [0, 1], since the slot's score is the mean of theirs. NaN where
        the centre crop cut the image away (see heat_to_image). The layer outputs come from the image's
        diagnosis when it was one of the last few (derm.explain.gradcam_from_activation)."""
        from derm.explain import gradcam_from_activation

        slot = model_name or self.routing[class_name]
        heats = []
        for name in self.members.get(slot, [slot]):
            clf = self.classifiers[name]
            activation = self._cam_activation(rgb, name)
            with self._lock:
                heat = gradcam_from_activation(clf.model, activation, CLASSES.index(class_name), clf.input_hw)
            heats.append(heat_to_image(heat, rgb.shape[:2], clf.input_hw))
        heat = np.mean(heats, axis=0)
        peak = np.nanmax(heat)
        return heat / peak if len(heats) > 1 and peak > 0 else heat


def heat_to_image(heat: np.ndarray, image_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Map a heat map on the classifier's input back onto the image through the same turn to landscape
    and centre crop as classifier_input. NaN where the crop cut the image away: the classifier never
    saw those pixels, which is no evidence at all rather than low evidence (derm.explain draws them apart)."""
    height, width = image_hw
    rotated = height > width
    land_h, land_w = (width, height) if rotated else (height, width)
    y0, x0, crop_h, crop_w = crop_box(land_h, land_w, input_hw[1] / input_hw[0])
    canvas = np.full((land_h, land_w), np.nan, dtype=np.float32)
    canvas[y0:y0 + crop_h, x0:x0 + crop_w] = cv2.resize(heat, (crop_w, crop_h))
    return np.ascontiguousarray(np.rot90(canvas, k=-1)) if rotated else canvas


def probability_matrix(results: list[Result]) -> np.ndarray:
    return np.array([[r.probabilities[c] for c in CLASSES] for r in results]).reshape(-1, NUM_CLASSES)
