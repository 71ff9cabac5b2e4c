"""One forward pass per classifier that also returns what the app reads besides the class scores, run
by PyTorch or by ONNX Runtime.

`Tapped` is that pass: the logits, the pooled features (similar cases, out-of-distribution energy) and
intermediate maps (a ResNet's layer2-4 for the domain gate, the last map for Grad-CAM). The same module
runs eagerly or is exported once to ONNX. On a CPU without native bf16 ONNX Runtime runs it in a
fraction of PyTorch eager's time (one thread, 150x200, `python bench/runtime_speed.py`), so there it is
the default, for the U-Net too (exported as it is); with Intel AMX, PyTorch's bf16 autocast is kept. `DERM_RUNTIME=torch` or `=onnx` overrides.

An exported graph is cached beside the decoded images (derm.data.cache_dir), named by the digest of
the weights file it was made from, so new weights never meet an old graph; nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

RUNTIME_ENV = "DERM_RUNTIME"  # torch | onnx; unset: ONNX Runtime where bf16 is not native and it is installed
RESNET_TAPS = ("layer2", "layer3", "layer4")
LITE_TAPS = ("head",)  # an EfficientNet-Lite's 1x1 head convolution, before its batch norm and ReLU6
OUTPUTS = ("logits", "pooled")


def tap_names(model: nn.Module) -> tuple[str, ...]:
    return RESNET_TAPS if hasattr(model, "layer4") else LITE_TAPS


def cam_tap(model: nn.Module) -> str:
    """The tap Grad-CAM reads: derm.explain.target_layer's output."""
    return tap_names(model)[-1]


class Tapped(nn.Module):
    """model(x)'s logits with the pooled features and the tapped maps of the same pass (eval mode)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        if hasattr(m, "layer4"):  # a torchvision ResNet
            x = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))
            l2 = m.layer2(x)
            l3 = m.layer3(l2)
            l4 = m.layer4(l3)
            pooled = torch.flatten(m.avgpool(l4), 1)
            return m.fc(pooled), pooled, l2, l3, l4
        x = m._swish(m._bn0(m._conv_stem(x)))  # an EfficientNet-Lite, as its extract_features (no drop connect in eval)
        for block in m._blocks:
            x = block(x)
        head = m._conv_head(x)
        pooled = torch.flatten(m._avg_pooling(m._swish(m._bn1(head))), 1)
        return m._fc(pooled), pooled, head


class BuiltOnFirstUse:
    """`model = BuiltOnFirstUse()` in a class whose `network` holds a PyTorch network or a zero-argument
    function that builds it: reading `model` builds it once. Through ONNX Runtime a diagnosis runs no
    PyTorch network, so none is built (nor torchvision imported) on a cold start; Grad-CAM's last layers
    and the gate's own checks build theirs when they need them."""

    def __get__(self, owner: object, owner_type: type | None = None) -> nn.Module:
        if owner is None:
            return self  # type: ignore[return-value]
        if not isinstance(owner.network, nn.Module):
            owner.network = owner.network()
        return owner.network


def onnx_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def wants_onnx(bf16: bool) -> bool:
    """Whether the classifiers run through ONNX Runtime here (module docstring)."""
    chosen = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if chosen not in ("", "torch", "onnx"):
        raise ValueError(f"{RUNTIME_ENV} must be torch or onnx, not {chosen!r}")
    if chosen == "onnx" and not onnx_installed():
        raise RuntimeError(f"{RUNTIME_ENV}=onnx but onnxruntime and onnx are not installed (pip install -r requirements.txt)")
    return chosen == "onnx" or (chosen == "" and not bf16 and onnx_installed())


def graph_path(weights_file: Path, input_hw: tuple[int, int]) -> Path:
    """Where the graph of these weights at this input size is cached (named by the file's digest)."""
    from derm.data import cache_dir

    from derm.weights import file_sha256

    digest = file_sha256(weights_file)[:16]
    return cache_dir() / "onnx" / f"{Path(weights_file).stem}_{digest}_{input_hw[0]}x{input_hw[1]}.onnx"


def export_graph(model: nn.Module, input_hw: tuple[int, int], path: Path, tapped: bool = True) -> Path:
    """Tapped(model) (or, tapped=False, the model's own output: the U-Net's) as an ONNX graph with a free
    batch size, written atomically."""
    names = list(OUTPUTS) + list(tap_names(model)) if tapped else ["out"]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    example = torch.zeros(1, 3, *input_hw)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on shape inference say nothing to a user
        torch.onnx.export(Tapped(model).eval() if tapped else model.eval(), (example,), str(partial), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=names,
                          dynamic_axes={"x": {0: "n"}, **{name: {0: "n"} for name in names}})
    partial.replace(path)
    return path


@functools.cache
def cpu_tag() -> str:
    """Names this ONNX Runtime and CPU: an optimised graph holds layout transforms for one instruction set."""
    import hashlib
    import platform

    import onnxruntime as ort

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha1(f"{ort.__version__} {platform.machine()} {flags}".encode()).hexdigest()[:12]


def optimized_path(path: Path) -> Path:
    """Where ONNX Runtime's own optimisation of an exported graph is kept, for this runtime and CPU."""
    return path.with_name(f"{path.stem}.{cpu_tag()}.optimized")


def session_options(threads: int | None = None) -> "onnxruntime.SessionOptions":  # noqa: F821
    """One intra-op thread per torch thread of this process (the app's workers: one), quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class OnnxTapped:
    """An exported graph through an ONNX Runtime InferenceSession on this process's torch thread count: called
    with a batch, it returns the tuple the module returned (Tapped: logits, pooled, maps).

    The first InferenceSession of a graph optimises it and keeps the result beside it; later ones load that and
    skip the optimisation (a cold `predict` loads seven graphs: about 0.55 s -> 0.16 s on a 2-core AVX2 CPU),
    with the same outputs bit for bit."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        options = session_options(threads)
        optimized = optimized_path(path)
        self.inference = None
        if optimized.is_file() and optimized.stat().st_mtime_ns >= path.stat().st_mtime_ns:  # not of an older graph
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                self.inference = ort.InferenceSession(str(optimized), options, providers=["CPUExecutionProvider"])
            except Exception:  # a damaged file: optimise again from the exported graph below
                optimized.unlink(missing_ok=True)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.inference is None:
            partial = optimized.with_name(f"{optimized.name}.{os.getpid()}.part")
            options.optimized_model_filepath = str(partial)
            try:
                self.inference = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception:  # the optimised graph could not be written (a read-only cache): run without keeping it
                self.inference = ort.InferenceSession(str(path), session_options(threads),
                                                     providers=["CPUExecutionProvider"])
            if partial.is_file():
                partial.replace(optimized)  # whole or not at all, when two processes start at once
        self.output_names = tuple(o.name for o in self.inference.get_outputs())
        self.tap_names = self.output_names[len(OUTPUTS):]  # a Tapped graph's maps, after logits and pooled

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.inference.run(None, {"x": np.ascontiguousarray(x.float().numpy())})
        return tuple(torch.from_numpy(o) for o in outputs)


def onnx_tapped(build: Callable[[], nn.Module], weights_file: Path, input_hw: tuple[int, int],
                tapped: bool = True) -> OnnxTapped:
    """The cached graph of these weights at this input size; `build` makes the PyTorch network only when
    the graph has to be exported (on first use, a few seconds)."""
    path = graph_path(weights_file, input_hw)
    if not path.is_file():
        export_graph(build(), input_hw, path, tapped)
    return OnnxTapped(path)
