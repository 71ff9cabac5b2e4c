"""Grad-CAM goes back onto exactly the pixels the classifier saw, and the rest is drawn as not seen.

The classifier sees a landscape, centre-cropped 4:3 view of every image (derm.pipeline.classifier_input):
a 3:2 photo loses a band on the left and right, a 1:2 portrait (turned to landscape first) loses a
band at the top and bottom. Which pixels it saw is measured here independently of the crop code, by
sending an image whose pixels hold their own coordinates through classifier_input.
"""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam.utils.image import show_cam_on_image

from derm.classes import CLASSES
from derm.explain import not_seen_look, overlay_heatmap, seen_by_model
from derm.pipeline import classifier_input, heat_to_image

INPUT_HW = (150, 200)  # the shipped classifiers' input
SHAPES = {"3:2 landscape (derm7pt)": (512, 768), "1:2 portrait": (600, 300)}


def coordinate_image(height: int, width: int) -> np.ndarray:
    """float32 H x W x 3 whose channels are each pixel's own (x, y, 0): resizing averages them exactly."""
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    return np.dstack([cols, rows, np.zeros_like(rows)])


def seen_footprint(height: int, width: int) -> tuple[slice, slice, float]:
    """The rows and columns of the image that classifier_input reads, from where its input pixels
    came from, and how many image pixels one input pixel spans (the measuring tolerance)."""
    view = classifier_input(coordinate_image(height, width), INPUT_HW)
    xs, ys = view[..., 0], view[..., 1]
    step = max(np.diff(xs, axis=1).max(), np.diff(xs, axis=0).max(), np.diff(ys, axis=1).max(),
               np.diff(ys, axis=0).max())
    half = step / 2
    rows = slice(round(ys.min() - half + 0.5), round(ys.max() + half + 0.5))
    cols = slice(round(xs.min() - half + 0.5), round(xs.max() + half + 0.5))
    return rows, cols, float(step)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_heat_map_covers_exactly_the_pixels_the_classifier_saw(shape):
    height, width = SHAPES[shape]
    heat = heat_to_image(np.ones(INPUT_HW, np.float32), (height, width), INPUT_HW)
    assert heat.shape == (height, width)
    rows, cols, _ = seen_footprint(height, width)
    expected = np.zeros((height, width), bool)
    expected[rows, cols] = True
    assert 0 < expected.mean() < 1  # this aspect really is cropped
    seen = seen_by_model(heat)
    assert np.array_equal(seen, expected), (np.argwhere(seen)[[0, -1]], rows, cols)
    assert np.all(heat[seen] == 1.0)  # every seen pixel carries the map, none is left empty


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_heat_value_lands_on_the_pixel_it_was_computed_from(shape):
    """A map whose values are the image coordinates the classifier's input pixels came from must come
    back as the identity: the same turn, crop and resize, reversed."""
    height, width = SHAPES[shape]
    view = classifier_input(coordinate_image(height, width), INPUT_HW)
    _, _, step = seen_footprint(height, width)
    for channel, along in ((0, np.mgrid[:height, :width][1]), (1, np.mgrid[:height, :width][0])):
        mapped = heat_to_image(np.ascontiguousarray(view[..., channel]), (height, width), INPUT_HW)
        seen = seen_by_model(mapped)
        assert np.abs(mapped[seen] - along[seen]).max() <= step


def test_a_4_3_image_is_seen_whole():
    heat = heat_to_image(np.random.default_rng(0).random(INPUT_HW, dtype=np.float32), (450, 600), INPUT_HW)
    assert seen_by_model(heat).all()


def test_the_overlay_draws_the_unseen_band_as_not_seen_and_the_rest_as_grad_cam():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)
    heat = heat_to_image(rng.random(INPUT_HW, dtype=np.float32), rgb.shape[:2], INPUT_HW)
    seen = seen_by_model(heat)
    out = overlay_heatmap(rgb, heat, 0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    cam = show_cam_on_image(rgb.astype(np.float32) / 255, np.nan_to_num(heat), use_rgb=True, image_weight=0.5)
    assert np.array_equal(out[seen], cam[seen])
    band = out[~seen].astype(int)
    assert np.array_equal(band, not_seen_look(rgb)[~seen])
    assert (band.max(axis=1) - band.min(axis=1)).max() == 0  # grey: no heat colour at all
    assert band.mean() > rgb[~seen].mean() + 40  # washed out, visibly apart from the image
    assert len(np.unique(band)) > 2  # and hatched, not a flat block


def test_a_slots_map_keeps_the_unseen_band_on_a_3_2_photo(tiny_weights, original_image):
    import cv2

    from derm.imageio import load_image
    from derm.pipeline import Predictor

    predictor = Predictor(tiny_weights)
    rgb = cv2.resize(load_image(original_image), (768, 512))  # a lesion photo at derm7pt's 3:2
    heat = predictor.gradcam(rgb, "MEL", "resnet18")  # the mean of two networks' maps
    rows, cols, _ = seen_footprint(*rgb.shape[:2])
    expected = np.zeros(rgb.shape[:2], bool)
    expected[rows, cols] = True
    assert np.array_equal(seen_by_model(heat), expected)
    assert np.nanmax(heat) == pytest.approx(1.0) and np.nanmin(heat) >= 0


def randomised_batch_norms(model):
    """Batch norms with spread statistics, so that an EfficientNet-Lite's ReLU6 after its head batch norm
    clips some positions at 0 and at 6 (the map must follow the clipping, as the gradient does)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.normal_(1, 1.0, generator=generator)
            module.bias.data.normal_(0, 1.0, generator=generator)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet18", "lite0"])
def test_the_map_from_a_recorded_pass_is_the_grad_cam_packages(arch):
    import torch

    from derm.explain import gradcam_from_activation, gradcam_map
    from derm.models import build_model
    from derm.runtime import Tapped

    torch.manual_seed(0)
    model = randomised_batch_norms(build_model(arch))
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _, *maps = Tapped(model)(x)  # the pass the app runs: logits and the maps it keeps
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-5)
    spreads = []
    for class_index in range(7):
        expected = gradcam_map(model, x[:1], class_index)
        heat = gradcam_from_activation(model, maps[-1][:1], class_index, (96, 128))
        assert heat.shape == (96, 128)
        np.testing.assert_allclose(heat, expected, atol=1e-4)
        spreads.append(expected.std())
    assert max(spreads) > 0.05  # some maps have something to show, not only flat zeros


def test_a_diagnosis_s_heat_map_runs_no_network_again(tiny_weights, original_image):
    from derm.explain import gradcam_map
    from derm.imageio import load_image
    from derm.pipeline import Predictor

    predictor = Predictor(tiny_weights)
    rgb = load_image(original_image)
    passes = []  # every pass through a network, in PyTorch or ONNX Runtime

    def counted(name, run):
        return lambda x: passes.append(name) or run(x)

    for name, clf in predictor.classifiers.items():
        clf.run = counted(name, clf.run)
    result = predictor.analyse(rgb)
    passes.clear()
    heat = predictor.gradcam(rgb, result.label, "resnet50")
    assert passes == []  # the layer outputs came from the diagnosis's own pass
    members = predictor.members["resnet50"]
    maps = [heat_to_image(gradcam_map(predictor.classifiers[n].model, predictor.classifiers[n].tensor([rgb]),
                                      CLASSES.index(result.label)), rgb.shape[:2], INPUT_HW) for n in members]
    expected = np.mean(maps, axis=0)
    np.testing.assert_allclose(heat, expected / np.nanmax(expected) if len(maps) > 1 else expected, atol=1e-4)
    passes.clear()
    flipped = np.ascontiguousarray(rgb[:, ::-1])  # an image never diagnosed: one forward pass per member
    predictor.gradcam(flipped, result.label, "resnet50")
    assert sorted(passes) == sorted(members)
