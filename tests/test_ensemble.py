"""Ensemble slots of several networks (manifest `ensemble.members`): the mean of the members'
probabilities is what routing, the app and the reports call resnet18 / resnet50."""

import json

import numpy as np
import pytest

from derm.classes import CLASSES
from derm.cli import slot_sources
from derm.explain import gradcam_map
from derm.pipeline import Predictor, average_members, ensemble_members, heat_to_image


def test_a_slot_is_the_mean_of_its_members_and_a_single_model_stays_itself():
    a, b, c = (np.random.default_rng(k).dirichlet(np.ones(7), size=5) for k in range(3))
    slots = average_members({"r18": a, "r18_2": b, "r50": c}, {"resnet18": ["r18", "r18_2"], "resnet50": ["r50"]})
    assert np.allclose(slots["resnet18"], (a + b) / 2) and np.array_equal(slots["resnet50"], c)
    assert np.allclose(slots["resnet18"].sum(1), 1)


def test_weights_without_members_have_one_slot_per_classifier():
    manifest = {"models": {"resnet18": {"arch": "resnet18"}, "resnet50": {"arch": "resnet50"}, "unet": {"arch": "unet"}},
                "ensemble": {"routing": {}}}
    assert ensemble_members(manifest) == {"resnet18": ["resnet18"], "resnet50": ["resnet50"]}


def test_export_sources_name_the_slots_first_member_after_the_slot():
    runs, members = slot_sources({"resnet18": ["a", "b"], "resnet50": ["c"]})
    assert list(runs) == ["resnet18", "resnet18_2", "resnet50"] and str(runs["resnet18_2"]) == "b"
    assert members == {"resnet18": ["resnet18", "resnet18_2"], "resnet50": ["resnet50"]}


@pytest.fixture(scope="module")
def predictor(tiny_weights) -> Predictor:
    return Predictor(tiny_weights)


def test_the_app_sees_slots_averaged_from_every_member(predictor, tiny_weights, original_image):
    from derm.imageio import load_image

    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    assert manifest["ensemble"]["members"]["resnet18"] == ["resnet18", "resnet18_2"]
    # the two members differ in colour constancy, so they see different inputs and must disagree somewhat
    assert {manifest["models"][m]["colour"] for m in ("resnet18", "resnet18_2")} == {"shades_of_gray", "none"}
    rgb = load_image(original_image)
    members = predictor.model_probabilities([rgb])
    assert set(members) == {"resnet18", "resnet18_2", "resnet50"}
    assert not np.allclose(members["resnet18"], members["resnet18_2"])
    combined, slots = predictor.classify([rgb])
    assert set(slots) == {"resnet18", "resnet50"}
    assert np.allclose(slots["resnet18"], (members["resnet18"] + members["resnet18_2"]) / 2)
    result = predictor.analyse(rgb, with_mask=False)
    assert set(result.per_model) == {"resnet18", "resnet50"}
    assert result.per_model["resnet18"]["NV"] == pytest.approx(float(slots["resnet18"][0, CLASSES.index("NV")]), abs=1e-6)
    assert np.allclose(combined[0], [result.probabilities[c] for c in CLASSES], atol=1e-6)


def test_a_slots_grad_cam_is_the_mean_of_its_members_maps(predictor, original_image):
    from derm.imageio import load_image

    rgb = load_image(original_image)
    k = CLASSES.index("MEL")
    maps = []
    for name in ("resnet18", "resnet18_2"):
        clf = predictor.classifiers[name]
        maps.append(heat_to_image(gradcam_map(clf.model, clf.tensor([rgb]), k), rgb.shape[:2], clf.input_hw))
    expected = np.mean(maps, axis=0)
    expected /= expected.max()
    heat = predictor.gradcam(rgb, "MEL", "resnet18")
    assert heat.shape == rgb.shape[:2] and heat.max() == pytest.approx(1.0)
    assert np.allclose(heat, expected, atol=1e-5)
    assert np.allclose(predictor.gradcam(rgb, "MEL", "resnet18_2"), maps[1], atol=1e-5)  # one member by its own name
