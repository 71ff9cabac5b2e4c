"""The classifiers' pass through ONNX Runtime gives PyTorch's answer: the same logits, pooled features and
tapped maps per architecture, and through the Predictor the same diagnosis, gate verdict and heat map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from derm import runtime
from derm.models import build_model


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "lite0"])
def test_the_exported_graph_gives_the_tapped_pass(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        expected = runtime.Tapped(model)(x)
        assert torch.allclose(expected[0], model(x), atol=1e-5)  # the tapped pass is the model's own
    graph = runtime.OnnxTapped(runtime.export_graph(model, (64, 96), tmp_path / "net.onnx"), threads=1)
    got = graph(x)  # a batch of three through a graph exported with one image: the batch size is free
    assert len(got) == 2 + len(runtime.tap_names(model))
    for mine, theirs in zip(got, expected):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-4, rtol=1e-4)


def predictor_with(runtime_name: str, weights, monkeypatch):
    from derm.pipeline import Predictor

    monkeypatch.setenv(runtime.RUNTIME_ENV, runtime_name)
    return Predictor(weights, bf16=False)


def test_a_diagnosis_is_the_same_through_onnx_runtime(tiny_weights, original_image, monkeypatch, tmp_path):
    from derm.imageio import load_image

    monkeypatch.setenv("DERM_CACHE", str(tmp_path / "cache"))
    rgb = load_image(original_image)
    eager, onnx = predictor_with("torch", tiny_weights, monkeypatch), predictor_with("onnx", tiny_weights, monkeypatch)
    assert all(c.onnx is None for c in eager.classifiers.values())
    assert all(c.onnx is not None for c in onnx.classifiers.values())
    a, b = eager.analyse(rgb), onnx.analyse(rgb)
    assert a.label == b.label and a.warnings == b.warnings and a.in_domain == b.in_domain
    for c in a.probabilities:
        assert b.probabilities[c] == pytest.approx(a.probabilities[c], abs=1e-5)
    for name in a.features:
        np.testing.assert_allclose(b.features[name], a.features[name], atol=1e-4, rtol=1e-4)
    if a.domain is not None:  # the gate reads the same layers of the same pass
        assert (b.domain.probability, b.domain.distance) == pytest.approx((a.domain.probability, a.domain.distance),
                                                                          rel=1e-3, abs=1e-4)
    np.testing.assert_allclose(onnx.gradcam(rgb, a.label), eager.gradcam(rgb, a.label), atol=1e-4)
    assert onnx.segmenter.onnx is not None and eager.segmenter.onnx is None  # the U-Net too
    _, prob_onnx = onnx.segmenter.mask(rgb)
    _, prob_eager = eager.segmenter.mask(rgb)
    np.testing.assert_allclose(prob_onnx, prob_eager, atol=1e-4)
    assert (a.mask == b.mask).mean() > 0.999


def test_a_graph_is_exported_once_per_weights_file(tiny_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("DERM_CACHE", str(tmp_path / "cache"))
    predictor_with("onnx", tiny_weights, monkeypatch)
    graphs = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    assert len(graphs) == len({e["file"] for e in manifest["models"].values()}) > 1  # the classifiers and the U-Net

    def no_export(*_args, **_kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(runtime, "export_graph", no_export)
    predictor_with("onnx", tiny_weights, monkeypatch)  # the cached graphs serve a second process
    assert sorted((tmp_path / "cache" / "onnx").glob("*.onnx")) == graphs


def test_an_unknown_runtime_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "onxx")
    with pytest.raises(ValueError, match="torch or onnx"):
        runtime.wants_onnx(bf16=False)
    monkeypatch.setenv(runtime.RUNTIME_ENV, "")
    assert not runtime.wants_onnx(bf16=True)  # native bf16: PyTorch's autocast is kept
    assert runtime.wants_onnx(bf16=False) == runtime.onnx_installed()


def test_the_gates_imagenet_check_reads_the_same_through_onnx_runtime(tmp_path, monkeypatch, original_image):
    from skimage import data as samples

    from derm.gate import objects
    from derm.imageio import load_image

    monkeypatch.setenv("DERM_CACHE", str(tmp_path / "cache"))
    model, _ = objects.load_imagenet_net()
    graph = runtime.onnx_tapped(lambda: model, objects.weights_file(objects.ARCH), (objects.INPUT_SIZE,) * 2)
    images = [samples.chelsea(), samples.coffee(), load_image(original_image)]
    eager = objects.imagenet_probabilities(model, images)
    through_onnx = objects.imagenet_probabilities(model, images, onnx=graph)
    np.testing.assert_allclose(through_onnx, eager, atol=1e-5)
    assert eager[0].argmax() == through_onnx[0].argmax() and eager[0].max() > 0.3  # a cat to both


def test_through_onnx_runtime_a_diagnosis_builds_no_pytorch_network(tiny_weights, original_image, monkeypatch, tmp_path):
    """Building the networks (and importing torchvision for them) is most of a cold start: a diagnosis
    through ONNX Runtime needs none; a heat map builds only its slot's members, for their last layers."""
    from derm.imageio import load_image

    monkeypatch.setenv("DERM_CACHE", str(tmp_path / "cache"))
    predictor_with("onnx", tiny_weights, monkeypatch)  # exports the graphs into the cache
    predictor = predictor_with("onnx", tiny_weights, monkeypatch)
    rgb = load_image(original_image)
    result = predictor.analyse(rgb)
    built = lambda: {n for n, c in predictor.classifiers.items() if isinstance(c.network, torch.nn.Module)}  # noqa: E731
    assert built() == set() and not isinstance(predictor.segmenter.network, torch.nn.Module)
    predictor.gradcam(rgb, result.label, "resnet18")
    assert built() == set(predictor.members["resnet18"])


def test_a_graph_is_named_by_its_weights_contents_hashed_once_per_file_version(tmp_path, monkeypatch):
    from derm import weights

    monkeypatch.setenv("DERM_CACHE", str(tmp_path / "cache"))
    weights_file = tmp_path / "net.safetensors"
    weights_file.write_bytes(b"first")
    first = runtime.graph_path(weights_file, (150, 200))
    assert first.name.startswith("net_") and first.name.endswith("_150x200.onnx")
    hits = weights._file_sha256.cache_info().hits
    assert runtime.graph_path(weights_file, (150, 200)) == first
    assert weights._file_sha256.cache_info().hits == hits + 1  # the second load reads nothing
    weights_file.write_bytes(b"second, longer")  # new contents: new size and time, so a new graph
    assert runtime.graph_path(weights_file, (150, 200)) != first


def test_a_second_session_loads_the_kept_optimisation_with_the_same_outputs(tmp_path):
    """The first InferenceSession keeps ONNX Runtime's optimised graph beside the exported one; later ones
    load it without optimising again and answer bit for bit the same. A damaged file is optimised again."""
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    path = runtime.export_graph(model, (64, 96), tmp_path / "net.onnx")
    optimized = runtime.optimized_path(path)
    x = torch.randn(2, 3, 64, 96)
    first = runtime.OnnxTapped(path, threads=1)(x)
    assert optimized.is_file() and not list(tmp_path.glob("*.part"))
    kept = optimized.read_bytes()
    second = runtime.OnnxTapped(path, threads=1)
    assert optimized.read_bytes() == kept  # loaded, not written again
    for a, b in zip(first, second(x)):
        assert torch.equal(a, b)
    optimized.write_bytes(b"not a graph")
    third = runtime.OnnxTapped(path, threads=1)(x)
    assert torch.equal(third[0], first[0]) and optimized.read_bytes() != b"not a graph"
    assert torch.equal(runtime.OnnxTapped(path, threads=1)(x)[0], first[0])  # the file kept again is whole
