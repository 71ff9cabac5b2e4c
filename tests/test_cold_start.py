"""Cold start: `python -m derm --help` and the app's first page must not wait seconds for torch and its
kin, and loading the weights must give exactly the files' tensors however the networks are built.

Wall-clock budgets are flaky on a shared machine; what makes --help or the first page slow is a heavy
import, and that is checked exactly: in a fresh interpreter, after every command's --help or after the
app's first page is drawn, which modules are loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from conftest import REPO
from derm.classes import CLASSES
from derm.weights import load_model, load_state_fp32, read_manifest

HEAVY = ("torch", "torchvision", "cv2", "pandas", "sklearn", "scipy", "PIL", "derm.runs", "derm.data",
         "derm.pipeline", "derm.models")

HELP_OF_EVERY_COMMAND = f"""
import contextlib, io, json, sys
from derm import cli
commands = list(cli.build_parser()._subparsers._group_actions[0].choices)
for argv in ([], *([c] for c in commands)):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cli.main([*argv, "--help"])
heavy = {HEAVY!r}
loaded = sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)
print(json.dumps({{"commands": commands, "loaded": loaded}}))
"""


def test_no_command_help_imports_a_heavy_module():
    done = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"predict", "train", "similar"} <= set(report["commands"])
    assert report["loaded"] == [], ("import these inside the command's function, not where the parser is built: "
                                    f"{report['loaded']}")


FIRST_PAGE = f"""
import json, sys
from streamlit.testing.v1 import AppTest
app = AppTest.from_file("streamlit_app.py", default_timeout=120).run()
examples = [b.key for b in app.button if b.key and b.key.startswith("example_")]
heavy = {HEAVY!r}
loaded = sorted({{m.split(".")[0] if m.split(".")[0] in heavy else m for m in sys.modules
                 if m in heavy or m.split(".")[0] in heavy}})
print(json.dumps({{"exception": bool(app.exception), "examples": examples, "loaded": loaded}}))
"""
FIRST_PAGE_NEEDS = {"cv2", "PIL", "derm.data"}  # finding and decoding the example images (no table is read)


def test_the_first_page_shows_its_examples_without_loading_the_models(tiny_weights, tmp_path):
    env = {**os.environ, "DERM_WEIGHTS": str(tiny_weights), "DERM_RUNS": str(tmp_path / "runs"),
           "DERM_DATA": str(tmp_path / "no-dataset")}
    done = subprocess.run([sys.executable, "-c", FIRST_PAGE], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["exception"] and len(report["examples"]) == len(CLASSES)
    assert set(report["loaded"]) <= FIRST_PAGE_NEEDS, ("import these where the page uses them, not at the top of "
                                                       f"app_components: {set(report['loaded']) - FIRST_PAGE_NEEDS}")


def test_loaded_networks_hold_exactly_the_files_tensors(tiny_weights):
    for entry in read_manifest(tiny_weights)["models"].values():
        model = load_model(entry, tiny_weights)
        stored = load_state_fp32(tiny_weights / entry["file"])
        state = model.state_dict()
        assert set(state) == set(stored)
        assert all(torch.equal(state[k], stored[k]) for k in stored), entry["file"]
        assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        assert all(p.requires_grad for p in model.parameters()) and not model.training  # Grad-CAM, eval mode


def test_a_diagnosis_from_the_command_line_reads_no_table():
    """`predict` imports neither pandas nor scikit-learn (half a second of a cold start): it reads no table."""
    code = ("import sys; from derm.pipeline import Predictor; from derm.uncertainty.commands import predict_fields; "
            "print(sorted(m for m in ('pandas', 'sklearn', 'scipy', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
