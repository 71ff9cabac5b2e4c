"""scripts/gpu_train.py: the schedule sizing and the pack that carries trained weights back from a remote GPU."""

import dataclasses
import importlib.util

import pytest
import torch

from derm import runs
from derm.export import load_source
from derm.train import TrainConfig

from conftest import REPO

_spec = importlib.util.spec_from_file_location("gpu_train", REPO / "scripts" / "gpu_train.py")
gpu_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_train)


@pytest.mark.parametrize("raw", [b"", b"\x01", b"\x01\x02\x03", bytes(range(256)) * 3])
def test_byte_shuffle_round_trips(raw):
    assert gpu_train.unshuffle_bytes(gpu_train.shuffle_bytes(raw), len(raw)) == raw


def test_sized_config_fits_the_epochs_in_the_budget():
    config = TrainConfig(epochs=10, batch_size=128)
    sized = gpu_train.sized_config(config, images_per_s=1000.0, seconds=130.0)
    assert sized.epoch_samples % 128 == 0
    train_seconds = 130.0 - 10 * gpu_train.SECONDS_PER_EPOCH_OVERHEAD
    assert train_seconds * 1000 - 10 * 128 <= sized.epochs * sized.epoch_samples <= train_seconds * 1000


def test_pack_and_unpack_give_back_the_runs(tmp_path, tiny_runs, monkeypatch):
    monkeypatch.setattr(gpu_train, "CHUNK_BYTES", 2**20)  # force several chunks
    sources = [tiny_runs["resnet18"], tiny_runs["resnet50"]]
    gpu_train.pack(sources, tmp_path / "out")
    chunks = sorted((tmp_path / "out").glob("pack.*"))
    assert len(chunks) > 2 and all(c.stat().st_size <= 2**20 for c in chunks)
    made = gpu_train.unpack(tmp_path / "out", tmp_path / "runs")
    assert [m.name for m in made] == [s.name for s in sources]
    for source, copy in zip(sources, made):
        original = torch.load(source / "best.pt", map_location="cpu", weights_only=False)
        model, config, record = load_source(copy)  # export takes the rebuilt folder like any run
        for key, value in model.state_dict().items():
            expected = original["model"][key]
            expected = expected.half().float() if expected.is_floating_point() else expected
            assert torch.equal(value, expected), key
        assert config["arch"] == original["config"]["arch"] and record["run"] == source.name
        assert runs.read_metrics(copy) == runs.read_metrics(source)


def test_probe_reads_the_speed_of_the_second_epoch(tmp_path, data_dir, fixture_split):
    split = tmp_path / "split.csv"
    split.write_bytes(fixture_split.read_bytes())
    config = TrainConfig.for_task("classifier", "resnet18", limit=64, height=48, width=64, batch_size=16,
                                  data=str(data_dir), split=str(split))
    speed = gpu_train.probe_speed(config, tmp_path / "runs", images=32)
    records = runs.read_metrics(tmp_path / "runs" / "probe-resnet18")
    assert len(records) == 2 and speed == records[-1]["images_per_s"] > 0


def test_segmenter_options_build_a_segmenter_config_with_the_task_defaults_elsewhere(tmp_path):
    (tmp_path / "split.csv").write_text("image_id,split\n")
    args = gpu_train.build_parser().parse_args(
        ["train", "--out", "o", "--task", "segmenter", "--archs", "unet", "--height", "144", "--width", "192",
         "--extra-masks", str(tmp_path), "--sampling", "balanced", "--batch-size", "32", "--encoder", "lite0"])
    config = gpu_train.config_from_args(args, "unet")
    assert config.encoder == "lite0" and gpu_train.run_name(config, "S") == "S-unet-30x0-geometric-lite0-144x192-gpu"
    default = TrainConfig.for_task("segmenter")
    assert (config.task, config.arch, config.height, config.width) == ("segmenter", "unet", 144, 192)
    assert (config.extra_masks, config.sampling, config.batch_size) == (str(tmp_path), "balanced", 32)
    assert (config.augment, config.weight_decay, config.label_smoothing) == (
        default.augment, default.weight_decay, default.label_smoothing)


def test_classifier_options_keep_the_classifier_defaults_and_reject_masks():
    args = gpu_train.build_parser().parse_args(["train", "--out", "o", "--colour", "shades_of_gray"])
    config = gpu_train.config_from_args(args, "resnet50")
    default = TrainConfig.for_task("classifier", "resnet50")
    assert (config.task, config.arch, config.colour) == ("classifier", "resnet50", "shades_of_gray")
    assert (config.height, config.width, config.augment, config.sampling) == (
        default.height, default.width, default.augment, default.sampling)
    masks = gpu_train.build_parser().parse_args(["train", "--out", "o", "--extra-masks", "x"])
    with pytest.raises(ValueError, match="extra"):
        gpu_train.config_from_args(masks, "resnet18")


def test_runs_started_together_get_different_names():
    base = TrainConfig.for_task("classifier", "resnet18", epoch_samples=512, colour="shades_of_gray")
    unet = TrainConfig.for_task("segmenter", epoch_samples=512, height=144, width=192)
    names = {gpu_train.run_name(c, "S") for c in (base, dataclasses.replace(base, seed=1),
                                                  dataclasses.replace(base, augment="device"), unet,
                                                  dataclasses.replace(unet, height=96, width=128),
                                                  dataclasses.replace(unet, encoder="lite0"))}
    assert len(names) == 6
    assert gpu_train.run_name(base, "S") == "S-resnet18-20x512-shades_of_gray-gpu"


def test_distillation_options_reach_the_run_config(tiny_runs):
    args = gpu_train.build_parser().parse_args(
        ["train", "--out", "o", "--teacher", str(tiny_runs["resnet50"]), "--distill-temperature", "2",
         "--distill-alpha", "0.5", "--init", str(tiny_runs["resnet18"])])
    config = gpu_train.config_from_args(args, "resnet18")
    assert (config.teacher, config.distill_temperature, config.distill_alpha, config.init) == (
        [str(tiny_runs["resnet50"])], 2.0, 0.5, str(tiny_runs["resnet18"]))
    assert gpu_train.run_name(config, "S").endswith("-kd-gpu")


def test_per_arch_options_take_one_value_for_all_or_one_each():
    args = gpu_train.build_parser().parse_args(
        ["train", "--out", "o", "--archs", "resnet18", "resnet50", "--lr", "1e-3", "3e-4", "--init", "none",
         "weights/resnet50.safetensors", "--distill-alpha", "0.5"])
    assert gpu_train.per_arch_problems(args) == []
    first, second = (gpu_train.config_from_args(args, arch, i) for i, arch in enumerate(args.archs))
    assert (first.lr, first.init, first.distill_alpha) == (1e-3, None, 0.5)
    assert (second.lr, second.init, second.distill_alpha) == (3e-4, "weights/resnet50.safetensors", 0.5)
    wrong = gpu_train.build_parser().parse_args(["train", "--out", "o", "--archs", "resnet18", "resnet50",
                                                 "lite0", "--lr", "1e-3", "3e-4"])
    assert gpu_train.per_arch_problems(wrong) == ["--seconds takes one value or one per arch (3)",
                                                  "--lr takes one value or one per arch (3)"]


@pytest.mark.parametrize("archs, extra", [(["resnet18", "resnet50"], []), (["lite0"], []),
                                          (["resnet18", "lite0"], []), (["lite0", "resnet18"], ["--teacher", "r"])])
def test_teach_wants_teachers_first_then_students_and_no_other_teacher(archs, extra):
    args = gpu_train.build_parser().parse_args(["train", "--out", "o", "--teach", "--archs", *archs,
                                                "--seconds", "60", *extra])
    assert gpu_train.per_arch_problems(args)


def run_teach(tmp_path, data_dir, fixture_split, monkeypatch, *options: str) -> None:
    """scripts/gpu_train.py train --teach lite0 resnet18 on 32 shipped images at 48x64, as from its command line."""
    split = tmp_path / "split.csv"
    split.write_bytes(fixture_split.read_bytes())
    monkeypatch.setenv("DERM_DATA", str(data_dir))
    monkeypatch.setenv("DERM_SPLIT", str(split))
    monkeypatch.setattr("sys.argv", [
        "gpu_train.py", "train", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "remote"), "--teach",
        "--archs", "lite0", "resnet18", "--epochs", "1", "--epoch-samples", "16", "--batch-size", "16",
        "--limit", "32", "--height", "48", "--width", "64", *options])
    gpu_train.main()


def test_teach_trains_a_teacher_then_its_student_and_both_come_back(tmp_path, data_dir, fixture_split,
                                                                   monkeypatch):
    run_teach(tmp_path, data_dir, fixture_split, monkeypatch, "--seconds", "600", "--lr", "1e-3", "3e-3",
              "--distill-alpha", "0.9", "0.6")
    teacher, student = gpu_train.unpack(tmp_path / "out", tmp_path / "runs")
    teacher_config, student_config = (runs.read_json(run / "config.json") for run in (teacher, student))
    assert (teacher_config["arch"], teacher_config["teacher"], teacher_config["lr"]) == ("lite0", None, 1e-3)
    assert student_config["arch"] == "resnet18"
    assert (student_config["lr"], student_config["distill_alpha"]) == (3e-3, 0.6)
    assert student_config["teacher"] == [str(teacher)]  # the rebuilt teacher here, not its folder over there
    assert [r["run"] for r in student_config["teacher_runs"]] == [teacher.name]
    model, config, _ = load_source(student)  # export takes the student with its teacher like any run
    assert config["teacher"] == [str(teacher)]


def test_a_teacher_out_of_time_stops_its_students_and_packs_nothing(tmp_path, data_dir, fixture_split,
                                                                   monkeypatch, capsys):
    run_teach(tmp_path, data_dir, fixture_split, monkeypatch, "--seconds", "0.01", "60")
    assert "lite0: out of time before its first epoch ended" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not any((tmp_path / "remote").glob("*resnet18*"))
