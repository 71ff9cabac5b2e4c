"""Colour constancy (derm.colour): one definition for training and the app, invariant to white balance."""

import json

import numpy as np
import pytest
import torch

from derm.colour import apply_constancy, shades_of_gray
from derm.pipeline import ClassifierModel, Predictor
from derm.train import SplitData, TrainConfig, make_batch
from derm.augment import normalize
from derm.data import Normalization


def lesion_like(n=3, h=30, w=40, seed=0) -> torch.Tensor:
    """Mid-range images (no clipping under the gains below), each with its own texture."""
    gen = torch.Generator().manual_seed(seed)
    return 0.15 + 0.5 * torch.rand(n, 3, h, w, generator=gen)


def p_norms(x: torch.Tensor, p: int = 6) -> torch.Tensor:
    return x.pow(p).mean(dim=(2, 3)).pow(1 / p)


def test_shades_of_gray_makes_the_illuminant_grey():
    cast = lesion_like() * torch.tensor([1.2, 0.8, 0.7]).view(1, 3, 1, 1)
    out = shades_of_gray(cast)
    norms = p_norms(out)
    assert torch.allclose(norms, norms.mean(1, keepdim=True).expand_as(norms), rtol=1e-3)
    assert not torch.allclose(p_norms(cast)[:, 0], p_norms(cast)[:, 2], rtol=0.1)  # the cast was real


def test_another_white_balance_gives_the_same_image_up_to_brightness():
    images = lesion_like()
    gains = torch.tensor([[0.8, 1.1, 1.2], [1.25, 0.9, 0.75], [1.0, 1.3, 1.0]]).view(3, 3, 1, 1)
    ratio = shades_of_gray(images * gains) / shades_of_gray(images)
    per_image = ratio.flatten(1)
    assert (per_image.std(1) / per_image.mean(1)).max() < 1e-4  # one scalar per image: the colours agree
    assert ((images * gains / images).flatten(1).std(1) > 0.1).all()  # they did not before


def test_none_is_the_identity_and_an_unknown_method_is_refused():
    images = lesion_like()
    assert torch.equal(apply_constancy(images, "none"), images)
    with pytest.raises(ValueError, match="shades_of_gray"):
        apply_constancy(images, "retinex")


def test_training_batches_are_colour_corrected_before_normalising():
    images = (lesion_like(4) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    split = SplitData(images, torch.zeros(4, dtype=torch.int64), None, ["a", "b", "c", "d"])
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    config = TrainConfig.for_task("classifier", "resnet18", colour="shades_of_gray")
    x, _ = make_batch(split, torch.arange(4), config, norm, train=False)
    expected = normalize(shades_of_gray(images.permute(0, 3, 1, 2).float() / 255), norm.mean, norm.std)
    assert torch.allclose(x, expected, atol=1e-5)


def test_colour_constancy_is_refused_for_the_segmenter_and_unknown_names():
    with pytest.raises(ValueError, match="colour"):
        TrainConfig.for_task("classifier", "resnet18", colour="retinex").validate()
    with pytest.raises(ValueError, match="classifiers"):
        TrainConfig.for_task("segmenter", colour="shades_of_gray").validate()


def test_a_classifier_trained_with_it_sees_a_colour_cast_upload_as_the_original():
    rgb = (lesion_like(1, 150, 200)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cast = np.clip(rgb * np.array([1.15, 0.9, 0.95]), 0, 255).round().astype(np.uint8)  # same overall brightness
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    with_constancy = ClassifierModel("m", torch.nn.Identity(), (150, 200), norm, colour="shades_of_gray")
    without = ClassifierModel("m", torch.nn.Identity(), (150, 200), norm)
    assert (with_constancy.tensor([cast]) - with_constancy.tensor([rgb])).abs().max() < 0.05  # uint8 rounding
    assert (without.tensor([cast]) - without.tensor([rgb])).abs().max() > 0.3


def test_the_export_records_each_classifiers_colour_and_the_app_applies_it(tiny_weights):
    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    assert manifest["models"]["resnet18"]["colour"] == "shades_of_gray"  # tests/conftest.py trains it so
    assert manifest["models"]["resnet50"]["colour"] == "none"
    predictor = Predictor(tiny_weights)
    assert predictor.classifiers["resnet18"].colour == "shades_of_gray"
    assert predictor.classifiers["resnet50"].colour == "none"
