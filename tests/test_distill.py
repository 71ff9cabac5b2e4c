"""Distillation: the loss by hand, unlabelled images in the sampler, and a tiny teacher and student through
the real training loop (derm.train.train)."""

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from derm import data
from derm.distill import UNLABELLED, distillation_loss, load_teachers, teacher_probabilities
from derm.models import build_model
from derm.train import TrainConfig, augmented_batch, epoch_indices, load_splits, network_inputs, train

from conftest import TINY_HW, write_squashed_mask_set


def tiny_config(split, data_dir, arch, **overrides) -> TrainConfig:
    base = dict(epochs=1, limit=32, height=TINY_HW[0], width=TINY_HW[1], batch_size=6, data=str(data_dir),
                split=str(split))
    return TrainConfig.for_task("classifier", arch, **{**base, **overrides})


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, data_dir, fixture_split):
    return train(tiny_config(fixture_split, data_dir, "lite0"), tmp_path_factory.mktemp("teacher") / "lite0",
                 progress=False)


@pytest.fixture(scope="module")
def unlabelled_dir(tmp_path_factory, data_dir, fixture_split):
    """An isic-style folder of 12 shipped images (their masks unused): 8 train, 4 val."""
    folder = tmp_path_factory.mktemp("isic")
    ids = list(pd.read_csv(fixture_split).query("split == 'test'")["image_id"][:12])
    write_squashed_mask_set(data_dir, folder, ids, prefix="ISIC_")
    pd.DataFrame({"image_id": [f"ISIC_{i}" for i in ids], "split": ["train"] * 8 + ["val"] * 4}).to_csv(
        folder / "split.csv", index=False)
    return folder


def test_the_loss_is_hintons_by_hand_and_only_labels_at_alpha_0():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = torch.tensor([0, 2])
    T, alpha = 2.0, 0.75
    log_q = torch.log_softmax(student / T, 1)
    kl = sum(float((teacher[i] * (teacher[i].log() - log_q[i])).sum()) for i in range(2)) / 2
    ce = -sum(float(torch.log_softmax(student, 1)[i, labels[i]]) for i in range(2)) / 2
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert distillation_loss(student, teacher, labels, T, alpha).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(student, teacher, labels, T, 0.0).item() == pytest.approx(ce, rel=1e-5)
    assert distillation_loss(student, teacher, labels, T, 0.0, label_smoothing=0.1).item() == pytest.approx(
        F.cross_entropy(student, labels, label_smoothing=0.1).item(), rel=1e-5)


def test_unlabelled_rows_enter_the_distillation_term_only():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    T, alpha = 3.0, 0.6
    mixed = distillation_loss(student, teacher, torch.tensor([0, UNLABELLED]), T, alpha)
    soft = F.kl_div(torch.log_softmax(student / T, 1), teacher, reduction="batchmean").item()
    assert mixed.item() == pytest.approx(alpha * T * T * soft + (1 - alpha) * F.cross_entropy(student[:1], torch.tensor([0])).item(),
                                         rel=1e-5)
    none = distillation_loss(student, teacher, torch.tensor([UNLABELLED, UNLABELLED]), T, alpha)
    assert none.item() == pytest.approx(alpha * T * T * soft, rel=1e-5)
    student.requires_grad_(True)
    distillation_loss(student, teacher, torch.tensor([UNLABELLED, UNLABELLED]), T, 0.0).backward()
    assert torch.all(student.grad == 0)  # at alpha 0 an unlabelled image teaches nothing


@pytest.mark.parametrize("sampling", ["natural", "sqrt", "balanced", "reference"])
def test_samplers_draw_unlabelled_images_in_their_share(sampling):
    labels = torch.cat([torch.tensor([0] * 60 + [1] * 20 + [4] * 10 + [6] * 10), torch.full((50,), UNLABELLED)])
    order = epoch_indices(labels, sampling, 0, torch.Generator().manual_seed(0))
    drawn = labels[order]
    share = float((drawn == UNLABELLED).float().mean())
    assert share == pytest.approx(50 / 150, abs=0.02)
    assert len(torch.unique(order[drawn == UNLABELLED])) == min(50, int((drawn == UNLABELLED).sum()))
    sized = epoch_indices(labels, sampling, 90, torch.Generator().manual_seed(0))
    assert len(sized) == 90 and int((labels[sized] == UNLABELLED).sum()) == 30


def test_without_unlabelled_images_the_order_is_unchanged():
    labels = torch.tensor([0] * 30 + [1] * 10 + [5] * 5)
    reference = torch.multinomial(torch.bincount(labels, minlength=7).clamp(min=1).float()[labels] ** -0.5, 45,
                                  replacement=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(epoch_indices(labels, "sqrt", 0, torch.Generator().manual_seed(3)), reference)


def kl_to_teacher(student: torch.nn.Module, teacher_run, config: TrainConfig, batch) -> float:
    """KL(teacher || student) at T=1 on a fixed augmented batch, each network seeing it its own way."""
    images, norm = batch
    (teacher,) = load_teachers([str(teacher_run)], torch.device("cpu"))
    target = teacher_probabilities([teacher], images, 1.0)
    student.eval()
    with torch.no_grad():
        log_q = torch.log_softmax(student(network_inputs(images, config, norm)).float(), 1)
    return F.kl_div(log_q, target, reduction="batchmean").item()


def test_a_teacher_sees_any_view_at_the_input_size_it_was_trained_at(teacher_run):
    (teacher,) = load_teachers([str(teacher_run)], torch.device("cpu"))
    assert teacher.size == TINY_HW
    seen = []
    teacher.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    view = torch.rand(3, 3, TINY_HW[0] * 2, TINY_HW[1] * 2, generator=torch.Generator().manual_seed(0))
    larger = teacher.logits(view)
    own_size = teacher.logits(F.interpolate(view, size=TINY_HW, mode="bilinear", antialias=True).clamp(0, 1))
    assert seen == [TINY_HW, TINY_HW] and larger.shape == (3, 7)
    torch.testing.assert_close(larger, own_size)


def test_a_student_learns_the_teachers_answers_through_the_real_loop(tmp_path, teacher_run, unlabelled_dir,
                                                                    data_dir, fixture_split):
    config = tiny_config(fixture_split, data_dir, "resnet18", epochs=2, teacher=[str(teacher_run)],
                         unlabelled=str(unlabelled_dir), distill_alpha=1.0, distill_temperature=2.0,
                         augment="device", lr=1e-2)
    run = train(config, tmp_path / "student", progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["teacher"] == [str(teacher_run)] and saved["unlabelled"] == str(unlabelled_dir)
    assert saved["distill_alpha"] == 1.0 and saved["distill_temperature"] == 2.0
    (record,) = saved["teacher_runs"]
    assert record["run"] == "lite0" and record["arch"] == "lite0" and math.isfinite(record["best_score"])

    splits, norm = load_splits(TrainConfig.from_dict(saved))
    assert int((splits["train"].labels == UNLABELLED).sum()) == 8 and (splits["val"].labels >= 0).all()
    norm = data.Normalization(tuple(saved["normalization"]["mean"]), tuple(saved["normalization"]["std"]))
    idx = torch.arange(len(splits["train"].labels))  # HAM's labelled images and the unlabelled ones
    images, _, _ = augmented_batch(splits["train"], idx, config, train=True, gen=torch.Generator().manual_seed(5))
    trained = build_model("resnet18")
    trained.load_state_dict(torch.load(run / "last.pt", weights_only=False)["model"])
    # the control: the same student, seed and images, trained on the labels alone
    control_run = train(TrainConfig.from_dict({**saved, "teacher": None, "unlabelled": None, "teacher_runs": [],
                                               "distill_alpha": 0.9, "normalization": {}}),
                        tmp_path / "control", progress=False)
    control = build_model("resnet18")
    control.load_state_dict(torch.load(control_run / "last.pt", weights_only=False)["model"])
    distilled_kl = kl_to_teacher(trained, teacher_run, config, (images, norm))
    control_kl = kl_to_teacher(control, teacher_run, config, (images, norm))
    assert distilled_kl < 0.75 * control_kl, (distilled_kl, control_kl)  # seeds 0-2 measured 0.21-0.37

    from derm.export import write_initial_weights

    manifest, _ = write_initial_weights(tmp_path / "weights", {"resnet18": run}, None)
    entry = manifest["models"]["resnet18"]
    assert entry["teacher"] == {"runs": saved["teacher_runs"], "temperature": 2.0, "alpha": 1.0,
                                "unlabelled": unlabelled_dir.name}
    assert "--teacher runs/lite0" in entry["training"]["command"] and "--unlabelled" in entry["training"]["command"]


@pytest.mark.parametrize("overrides, message", [
    (dict(teacher=["no/such/run"]), "teacher no/such/run: no finished run"),
    (dict(distill_alpha=2.0), "alpha must be between 0 and 1"),
    (dict(distill_temperature=0.0), "temperature must be above 0"),
    (dict(unlabelled="somewhere"), "unlabelled images need a teacher"),
])
def test_bad_distillation_settings_are_refused_with_a_message(overrides, message, data_dir, fixture_split):
    with pytest.raises(ValueError, match=message):
        tiny_config(fixture_split, data_dir, "resnet18", **overrides).validate()


def test_a_teacher_must_be_a_classifier_run_and_only_for_classifiers(tmp_path, teacher_run, data_dir,
                                                                     fixture_split):
    segmenter_run = tmp_path / "unet"
    segmenter_run.mkdir()
    (segmenter_run / "best.pt").write_bytes(b"")
    (segmenter_run / "config.json").write_text(json.dumps({"task": "segmenter"}))
    with pytest.raises(ValueError, match="not a classifier run"):
        tiny_config(fixture_split, data_dir, "resnet18", teacher=[str(segmenter_run)]).validate()
    with pytest.raises(ValueError, match="a teacher is for classifiers"):
        TrainConfig.for_task("segmenter", teacher=[str(teacher_run)]).validate()


def test_cli_args_round_trip_the_distillation_flags(teacher_run, unlabelled_dir):
    from derm.cli import build_parser

    config = TrainConfig.for_task("classifier", "resnet50", teacher=[str(teacher_run), str(teacher_run)],
                                  distill_temperature=3.0, distill_alpha=0.5, unlabelled=str(unlabelled_dir))
    args = build_parser().parse_args(["train", *config.cli_args()])
    assert args.teacher == config.teacher and args.unlabelled == config.unlabelled
    assert (args.distill_temperature, args.distill_alpha) == (3.0, 0.5)
    recipe = config.cli_args(only_changed=True)
    assert recipe[recipe.index("--teacher"):][:3] == ["--teacher", str(teacher_run), str(teacher_run)]


def test_the_export_scores_the_teacher_as_a_reference_row_and_a_reexport_keeps_it(tmp_path, teacher_run, data_dir,
                                                                                 fixture_split, monkeypatch):
    import shutil

    import numpy as np

    from derm import modelcard
    from derm.evaluate import classifier_probabilities, split_table
    from derm.export import export
    from derm.metrics import classification_report
    from derm.run_scores import checkpoint_classifier

    student = train(tiny_config(fixture_split, data_dir, "resnet18", teacher=[str(teacher_run)]), tmp_path / "student",
                    progress=False)
    out = tmp_path / "weights"
    reference = export({"resnet18": student}, None, out, limit=16)["teacher"]
    assert reference["runs"] == ["lite0"] and reference["arch"] == "lite0"
    teacher, _ = checkpoint_classifier(teacher_run)
    for split in ("val", "test"):
        part = split_table(out / "split.csv", str(data_dir), split, 16)
        probs = classifier_probabilities(teacher, data.cached_array(list(part["image_path"]), teacher.input_hw, "image"))
        assert reference[split]["macro_auc"] == pytest.approx(classification_report(part["label_idx"].values, probs)["macro_auc"])
    monkeypatch.setenv("DERM_DATA", str(data_dir))  # shipped weights name no data folder: the default one is used
    again = tmp_path / "again"  # re-exported from the shipped files alone: the teacher's entry and scores stay
    shutil.copytree(out, again)
    metrics = export({"resnet18": again / "resnet18.safetensors"}, None, again, limit=16)
    assert metrics["teacher"] == json.loads(json.dumps(reference))
    assert json.loads((again / "manifest.json").read_text())["models"]["resnet18"]["teacher"]["runs"][0]["run"] == "lite0"
    rows = "\n".join(modelcard.models_section(modelcard.load(again)))
    assert "teacher: lite0 (reference, not shipped)" in rows
    assert np.isfinite(reference["test"]["balanced_accuracy"])
