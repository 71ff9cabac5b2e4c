"""The Streamlit app driven headless (AppTest) on tiny real weights and real HAM10000 images:
the diagnosis, every kind of bad input, the examples, the explorer's cell click (also with only the
shipped test split, as in a fresh clone), a real training run and its promotion.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import AppTestError

from derm import catalog, data, explorer, jobs, runs
from derm.classes import CLASSES, FULL_NAMES
from derm.pipeline import Result
from derm.retrieval import similar

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
RUN_TIMEOUT_S = 180


@pytest.fixture
def runs_dir(tiny_weights, tmp_path, monkeypatch) -> Path:
    """The app on the tiny weights, with its own empty runs folder."""
    monkeypatch.setenv("DERM_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("DERM_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def no_dataset(tmp_path, monkeypatch) -> None:
    """As in a fresh clone: the full HAM10000 is not found, only the test split shipped in the repo."""
    (tmp_path / "no-dataset").mkdir()
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "no-dataset"))


@pytest.fixture(params=["found", "shipped"])
def images_mode(request) -> str:
    """Run a test with the images derm finds (the full dataset where present) and with the shipped ones."""
    if request.param == "shipped":
        request.getfixturevalue("no_dataset")
    return request.param


@pytest.fixture(scope="module")
def lesion(original_image) -> Image.Image:
    return Image.open(original_image).convert("RGB")


def start_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception
    return at


def upload(at: AppTest, name: str, content: bytes, mime: str = "application/octet-stream") -> AppTest:
    at.file_uploader(key="upload").set_value((name, content, mime)).run()
    assert not at.exception, at.exception
    return at


def analyses(at: AppTest) -> list[Result]:
    return list(at.session_state.get("analyses", {}).values())


def texts(elements) -> str:
    return " | ".join(str(e.value) for e in elements)


def captions(at: AppTest) -> list[str]:
    return [c for image in at.get("image") for c in image.captions]


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- diagnose


def test_an_uploaded_photo_gets_probabilities_overlays_and_measurements(runs_dir, original_image):
    at = upload(start_app(), original_image.name, original_image.read_bytes(), "image/jpeg")
    assert not at.error
    [result] = analyses(at)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert at.subheader[0].value == (f"Most likely: {FULL_NAMES[result.label]} ({result.label}), "
                                     f"{result.confidence:.0%}")
    table = next(m.value for m in at.markdown if m.value.startswith("| class | diagnosis | ensemble |"))
    header, _, *lines = table.splitlines()
    rows = [line.split(" | ") for line in lines]  # one per class, most likely first
    assert rows[0][0] == f"| {result.label}" and sorted(r[0].strip("| ") for r in rows) == sorted(CLASSES)
    assert [r[2].split()[0] for r in rows] == [f"{p:.1%}" for p in sorted(result.probabilities.values(), reverse=True)]
    assert rows[0][1] == FULL_NAMES[result.label] and rows[0][2].endswith(" " + "█" * round(result.confidence * 10))
    assert all(f" | {name} |" in header for name in result.per_model)  # each slot's own probability
    assert any(c.startswith("Grad-CAM of") for c in captions(at)) and "U-Net lesion outline" in captions(at)
    measures = next(m.value for m in at.markdown if m.value.startswith("| measure |"))  # drawn as plain HTML
    assert f"| Area | {result.lesion['area_px']:,} px (" in measures and "| Largest diameter |" in measures
    assert "no physical scale" in texts(at.caption) and "not a diagnosis" in texts(at.markdown)
    # the page's warnings are the result's, plus the malignancy triage's flag where the image is flagged
    assert [w.value for w in at.warning if "Research demo: not medical advice" not in w.value] == result.warnings
    assert at.download_button[0].label.startswith("Download result")

    # widget changes redraw from the browser session's cache: the models do not run again
    at.segmented_control(key="diagnose_opacity").set_value("strong").run()
    explain = next(s for s in at.segmented_control if s.label == "Explain class")
    assert explain.value == result.label and explain.options == list(CLASSES)
    other = next(c for c in result.probabilities if c != result.label)
    explain.set_value(other).run()
    assert not at.exception and analyses(at)[0] is result
    assert any(c.endswith(f"for {other}: red marks what raised that score") for c in captions(at))


def truncated_jpeg(lesion: Image.Image) -> bytes:
    whole = encoded(lesion, "JPEG")
    return whole[: len(whole) // 2]


def decompression_bomb(_: Image.Image) -> bytes:
    return encoded(Image.new("L", (12_000, 10_000)), "PNG")  # 120 megapixels in ~120 kB


UNUSABLE: dict[str, tuple[str, Callable[[Image.Image], bytes], str]] = {
    "text file": ("notes.jpg", lambda _: b"patient notes, not a picture\n" * 20, "not an image this app can read"),
    "empty file": ("empty.png", lambda _: b"", "the file is empty"),
    "truncated JPEG": ("cut.jpg", truncated_jpeg, "truncated or corrupt"),
    "decompression bomb": ("bomb.png", decompression_bomb, "too many pixels"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_files_get_one_clear_message(runs_dir, lesion, case):
    name, make, message = UNUSABLE[case]
    at = upload(start_app(), name, make(lesion))
    assert len(at.error) == 1 and message in at.error[0].value and at.error[0].value.startswith(name)
    assert not analyses(at) and len(at.get("image")) == len(catalog.EXAMPLES)  # the examples row, nothing else


def exif_rotated(lesion: Image.Image) -> bytes:
    exif = lesion.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encoded(lesion, "JPEG", exif=exif)


def sixteen_bit_png(lesion: Image.Image) -> bytes:
    grey16 = (np.asarray(lesion.convert("L"), dtype=np.uint16) * 257)
    return encoded(Image.fromarray(grey16), "PNG")


ODD_BUT_USABLE: dict[str, tuple[str, Callable[[Image.Image], bytes], Callable[[Result], bool]]] = {
    "greyscale": ("grey.png", lambda im: encoded(im.convert("L"), "PNG"), lambda r: r.mask.shape == (450, 600)),
    "RGBA": ("rgba.png", lambda im: encoded(im.convert("RGBA"), "PNG"), lambda r: r.mask.shape == (450, 600)),
    "16-bit PNG": ("deep.png", sixteen_bit_png, lambda r: r.mask.shape == (450, 600)),
    "CMYK JPEG": ("cmyk.jpg", lambda im: encoded(im.convert("CMYK"), "JPEG"), lambda r: r.mask.shape == (450, 600)),
    "EXIF-rotated": ("phone.jpg", exif_rotated, lambda r: r.mask.shape == (600, 450)),  # shown upright: portrait
    "16x16": ("tiny.png", lambda im: encoded(im.resize((16, 16)), "PNG"), lambda r: any("tiny" in w for w in r.warnings)),
    "6000x4000 photo": ("big.jpg", lambda im: encoded(im.resize((6000, 4000)), "JPEG", quality=85),
                        lambda r: r.lesion["image_px"] == [1600, 1067]),  # downscaled on decode
}


@pytest.mark.parametrize("case", list(ODD_BUT_USABLE))
def test_odd_images_are_converted_and_analysed(runs_dir, lesion, case):
    name, make, check = ODD_BUT_USABLE[case]
    at = upload(start_app(), name, make(lesion))
    assert not at.error
    [result] = analyses(at)
    assert check(result)
    assert at.subheader[0].value.startswith("Most likely:")


def test_camera_photo_is_analysed(runs_dir, lesion):
    at = start_app()
    at.radio(key="source").set_value("Camera").run()
    at.camera_input(key="camera").set_value(("shot.jpg", encoded(lesion, "JPEG"), "image/jpeg")).run()
    assert not at.exception and not at.error and len(analyses(at)) == 1


def test_ham10000_picker_by_id_class_and_random(runs_dir, tiny_weights, images_mode):
    source = data.image_source()
    assert source.complete == (images_mode == "found" and source.path != data.TEST_SUBSET_DIR)
    table = data.load_table(source.path)
    at = start_app()
    at.radio(key="source").set_value("HAM10000 image").run()
    expected = "the full dataset's images" if source.complete else "the models never saw these images"
    assert expected in texts(at.caption)
    at.text_input(key="ham_id").set_value("ISIC_9999999").run()
    assert "not a HAM10000 image id" in at.error[0].value and not analyses(at)

    image_id = data.load_table(data.TEST_SUBSET_DIR)["image_id"].iloc[0]  # a test image: in either table
    at.text_input(key="ham_id").set_value(image_id.lower()).run()
    truth = table.set_index("image_id").loc[image_id]
    assert not at.error and f"**{FULL_NAMES[truth['label']]} ({truth['label']})**" in texts(at.info)
    split = catalog.split_of(image_id, tiny_weights / "split.csv")  # the tiny models' own split of these images
    assert f"{image_id} is in the {split} split" in texts(at.caption)

    at.selectbox(key="ham_class").set_value("VASC").run()
    next(b for b in at.button if b.label == "Random").click().run()
    picked = at.text_input(key="ham_id").value
    assert table.set_index("image_id").loc[picked, "label"] == "VASC"
    assert "(VASC)**" in texts(at.info) and len(analyses(at)) == 2


def test_an_example_click_gives_a_result_beside_its_ground_truth(runs_dir, no_dataset):
    at = start_app()
    assert "the test split shipped with derm" in texts(at.sidebar.markdown)
    shown = [b.key for b in at.button if b.key and b.key.startswith("example_")]
    assert shown == [f"example_{catalog.EXAMPLES[c]}" for c in CLASSES]
    first = catalog.EXAMPLES[CLASSES[0]]
    at.button(key=f"example_{first}").click().run()
    assert not at.exception and not at.error
    [result] = analyses(at)
    assert at.subheader[0].value.startswith(f"Most likely: {FULL_NAMES[result.label]}")
    assert f"ground truth for {first}: **{FULL_NAMES[CLASSES[0]]} ({CLASSES[0]})**" in texts(at.info)
    assert at.radio(key="source").value == "HAM10000 image" and at.text_input(key="ham_id").value == first


SIMILAR_GALLERY = 40


@pytest.fixture
def small_gallery(no_dataset, tmp_path, monkeypatch) -> None:
    """Similar cases from the first 40 shipped test images, cached in a folder of this test's own."""
    monkeypatch.setenv(similar.GALLERY_LIMIT_ENV, str(SIMILAR_GALLERY))
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def case_picker(at: AppTest):
    """The numbered buttons that analyse one of the similar cases (key similar_<image key>), or None."""
    return next((b for b in at.pills if b.key and b.key.startswith("similar_")), None)


def case_ids(at: AppTest) -> list[str]:
    """The similar cases' image ids in their numbered order: the table's image row."""
    table = next(m.value for m in at.markdown if m.value.startswith("| case |"))
    row = next(line for line in table.splitlines() if line.startswith("| image |"))
    return [cell.strip() for cell in row.strip().strip("|").split("|")[1:]]


def build_similar(at: AppTest) -> AppTest:
    """Click the button that builds the gallery (absent once this server process has built it)."""
    for build in [b for b in at.button if b.key and b.key.startswith("similar_build_")]:
        assert build.label == "Show similar confirmed cases"
        build.click().run()
    assert not at.exception, at.exception
    return at


def test_similar_cases_sit_under_the_diagnosis_and_a_click_analyses_one(runs_dir, small_gallery):
    at = start_app()
    first = catalog.EXAMPLES["MEL"]
    at.button(key=f"example_{first}").click().run()
    if case_picker(at) is None:  # the first time this process shows cases: it asks before minutes of work
        assert "confirmed cases once" in texts(at.caption)
    build_similar(at)
    [result] = analyses(at)
    vote = next(m.value for m in at.markdown if m.value.startswith("Vote of the"))
    assert "agrees with the ensemble" in vote or f"differs from the ensemble's {result.label}" in vote
    picker = case_picker(at)
    assert picker.label == "Analyse one of these cases" and picker.value is None
    cases = case_ids(at)
    assert len(cases) == 8 and picker.options == [str(i) for i in range(1, 9)]
    table = next(m.value for m in at.markdown if m.value.startswith("| case |"))  # a column per case, numbered
    assert table.splitlines()[0] == "| case | " + " | ".join(str(i) for i in range(1, 9)) + " |"
    assert table.splitlines()[-1].startswith("| similarity |")
    # the examples row, one numbered strip for the 8 cases, Grad-CAM and the outline: not an image per case
    assert len(at.get("image")) == len(catalog.EXAMPLES) + 3
    lesion = data.load_table(data.TEST_SUBSET_DIR).set_index("image_id").loc[first, "lesion_id"]
    gallery_lesions = data.load_table(data.TEST_SUBSET_DIR).set_index("image_id")["lesion_id"]
    assert all(gallery_lesions[c] != lesion for c in cases)  # never the image's own lesion

    picked = cases[0]
    picker.set_value(picked).run()
    assert not at.exception
    assert at.text_input(key="ham_id").value == picked and len(analyses(at)) == 2
    assert f"ground truth for {picked}" in texts(at.info)
    assert len(case_ids(at)) == 8 and case_picker(at) is not None  # the gallery is ready now: no second click


def test_a_refused_image_shows_similar_cases_only_once_the_guess_is_asked_for(runs_dir, small_gallery, monkeypatch):
    from derm.gate.domain import GateDecision
    from derm.pipeline import Predictor

    refused = GateDecision(False, 0.01, 99.0, "photo", "It looks like an ordinary photo.")
    monkeypatch.setattr(Predictor, "check_domain", lambda self, images, deep=None: [refused] * len(images))
    monkeypatch.setenv("DERM_WORKERS", "0")  # the models in this process, where the patch is
    at = start_app()
    at.button(key=f"example_{catalog.EXAMPLES['MEL']}").click().run()
    assert "Not analysed" in texts(at.error)
    assert "Similar confirmed cases" not in texts(at.markdown) and case_picker(at) is None
    override = next(t for t in at.toggle if t.label == "Show the models' guess anyway")
    override.set_value(True).run()
    build_similar(at)
    assert "Similar confirmed cases (unreliable)" in texts(at.markdown) and len(case_ids(at)) == 8


def test_the_explorer_shows_similar_cases_and_a_click_opens_diagnose(runs_dir, tiny_weights, small_gallery):
    frame = explorer.load_predictions(tiny_weights)
    at = start_app("app_pages/explorer.py")
    model = at.selectbox(key="explorer_model").value
    true, pred = frame.iloc[0]["true"], frame.iloc[0][f"{model}_pred"]
    at.selectbox(key=explorer.TRUE_KEY).set_value(true).run()
    at.selectbox(key=explorer.PRED_KEY).set_value(pred).run()
    opened = explorer.images_in_cell(frame, model, true, pred)["image_id"].iloc[0]
    at.button(key=f"open_{opened}").click().run()
    build_similar(at)
    picker = case_picker(at)
    assert len(case_ids(at)) == 8 and picker.options == [str(i) for i in range(1, 9)]
    # a row across the page, not squeezed into the image's detail column
    detail = next(c for c in at.columns if any(s.label == "Explain class" for s in c.get("button_group")))
    assert not [b for b in detail.get("button_group") if b.key and b.key.startswith("similar_")]
    picked = case_ids(at)[0]
    picker.set_value(picked).run()
    assert not at.exception
    assert at.text_input(key="ham_id").value == picked and f"ground truth for {picked}" in texts(at.info)


def test_without_weights_every_page_says_so(tmp_path, monkeypatch, original_image):
    monkeypatch.setenv("DERM_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("DERM_RUNS", str(tmp_path / "runs"))
    at = start_app()
    assert "manifest.json missing" in texts(at.sidebar.warning)  # AppTest keeps sidebar items of the first run only
    upload(at, original_image.name, original_image.read_bytes(), "image/jpeg")
    assert "No trained models to run" in texts(at.warning) and not analyses(at)
    for page, message in (("app_pages/explorer.py", "no test predictions"),
                          ("app_pages/model_card.py", "No trained weights"), ("app_pages/training.py", None)):
        at.switch_page(page).run()
        assert not at.exception
        if message:
            assert message in texts(at.warning)


def test_the_model_card_page_shows_the_cards_headline_table(runs_dir, tiny_weights):
    from derm.modelcard import headline_table, render

    at = start_app("app_pages/model_card.py")
    expected = headline_table(tiny_weights)
    shown = [table.value for table in at.table if list(table.value.columns) == list(expected.columns)]
    assert len(shown) == 1 and shown[0].reset_index(drop=True).equals(expected)
    assert f"| {expected.iloc[0]['evaluation set']} | {expected.iloc[0]['images']} |" in render(tiny_weights)


def test_the_model_card_page_shows_no_none_whole_class_names_and_wrapped_commands(runs_dir):
    at = start_app("app_pages/model_card.py")
    tables = [t.value for t in at.table] + [d.value for d in at.dataframe]
    cells = [v for frame in tables for v in frame.to_numpy().ravel()]
    assert cells and not [v for v in cells if v is None or v != v or str(v) in ("None", "nan", "NaN")]
    assert "—" in cells  # the segmenter's temperature and the classifiers' threshold do not apply
    # long class names sit in static tables, which wrap; interactive grids cut them off at the column edge
    static = {str(v) for t in at.table for v in t.value.to_numpy().ravel()}
    assert FULL_NAMES["AKIEC"] in static
    assert not [d for d in at.dataframe if FULL_NAMES["AKIEC"] in d.value.to_numpy()]
    [commands] = [c for c in at.code if "derm train" in c.value]
    assert commands.proto.wrap_lines


# ----------------------------------------------------------------------------- explorer


def test_explorer_lists_a_clicked_cell_and_opens_an_image(runs_dir, tiny_weights, images_mode):
    frame = explorer.load_predictions(tiny_weights)
    at = start_app("app_pages/explorer.py")
    assert at.metric[0].value == str(len(frame))

    cells = explorer.confusion_cells(frame, "resnet18")
    busiest = cells.sort_values("count", kind="stable").iloc[-1]
    at.selectbox(key="explorer_model").set_value("resnet18").run()
    click = {"selection": {"points": [{"x": busiest["pred"], "y": busiest["true"],
                                       "customdata": [busiest["true"], busiest["pred"]]}]}}
    assert explorer.apply_cell_click(at.session_state, click)
    at.run()
    assert not at.exception
    assert f"**{busiest['count']} test images of" in texts(at.markdown)
    expected = explorer.images_in_cell(frame, "resnet18", busiest["true"], busiest["pred"])
    opens = [b for b in at.button if b.label == "Open"]
    assert [b.key for b in opens] == [f"open_{i}" for i in expected["image_id"][: len(opens)]]
    assert len(opens) == min(len(expected), 12) and len(at.get("image")) == len(opens)  # a thumbnail each

    at.button(key=f"open_{expected['image_id'][0]}").click().run()
    assert not at.exception
    assert f"**{expected['image_id'][0]}**" in texts(at.markdown)
    # the resnet18 slot averages two networks: its map is the mean of theirs, and the caption says so
    assert any(c.startswith("Grad-CAM of resnet18 (the mean of resnet18 and resnet18_2)") for c in captions(at))
    assert "U-Net lesion outline" in captions(at)


def confusion_chart(at: AppTest, model: str):
    return next(c for c in at.get("plotly_chart") if c.proto.id and c.key == f"confusion_{model}")


def test_the_confusion_matrix_fills_its_column_and_a_click_leaves_every_count_readable(runs_dir, tiny_weights):
    frame = explorer.load_predictions(tiny_weights)
    at = start_app("app_pages/explorer.py")
    cells = explorer.confusion_cells(frame, "ensemble")
    chart = confusion_chart(at, "ensemble")
    spec = json.loads(chart.proto.spec)
    assert "width" not in spec["layout"] and spec["layout"]["height"] >= 500  # the width follows the column
    # the counts are annotations: Plotly dims the text of unselected points, never annotations
    assert not [t for t in spec["data"] if t.get("text") is not None or "text" in t.get("mode", "")]
    shown = [a["text"] for a in spec["layout"]["annotations"]]
    assert shown == [f"<b>{n}</b><br>{r:.0%}" for n, r in zip(cells["count"], cells["rate"])]
    [clickable] = [t for t in spec["data"] if t["type"] == "scatter"]
    assert clickable["selected"]["marker"]["opacity"] == clickable["unselected"]["marker"]["opacity"]

    busiest = cells.sort_values("count", kind="stable").iloc[-1]
    explorer.apply_cell_click(at.session_state, {"selection": {"points": [
        {"customdata": [busiest["true"], busiest["pred"]]}]}})
    at.run()
    spec = json.loads(confusion_chart(at, "ensemble").proto.spec)
    [outline] = spec["layout"]["shapes"]  # the chosen cell is outlined; the others keep their look
    assert (outline["x0"] + outline["x1"]) / 2 == CLASSES.index(busiest["pred"])
    assert (outline["y0"] + outline["y1"]) / 2 == CLASSES.index(busiest["true"])
    assert [a["text"] for a in spec["layout"]["annotations"]] == shown


def test_the_explorers_list_shows_and_filters_by_patient_metadata(runs_dir, tiny_weights, no_dataset):
    frame = explorer.load_predictions(tiny_weights)
    table = data.load_table(data.TEST_SUBSET_DIR).set_index("image_id")
    at = start_app("app_pages/explorer.py")
    cells = explorer.confusion_cells(frame, "ensemble")
    busiest = cells.sort_values("count", kind="stable").iloc[-1]
    at.selectbox(key=explorer.TRUE_KEY).set_value(busiest["true"]).run()
    at.selectbox(key=explorer.PRED_KEY).set_value(busiest["pred"]).run()
    listed = [b.key.removeprefix("open_") for b in at.button if b.label == "Open"]
    patient_lines = [c for c in texts(at.caption).split(" | ") if " y · " in c or "age unknown" in c]
    assert len(patient_lines) == len(listed) > 0
    first = table.loc[listed[0]]
    assert f"{first['age']:.0f} y · {first['sex']} · {first['localization']}" in patient_lines[0]

    in_cell = explorer.images_in_cell(frame, "ensemble", busiest["true"], busiest["pred"])["image_id"]
    sex = table.loc[in_cell, "sex"].value_counts().index[0]
    at.multiselect(key="explorer_sex").set_value([sex]).run()
    assert not at.exception
    expected = [i for i in in_cell if table.loc[i, "sex"] == sex]
    assert f"**{len(expected)} of {len(in_cell)} test images of" in texts(at.markdown)
    listed = [b.key.removeprefix("open_") for b in at.button if b.label == "Open"]
    assert listed == expected[: len(listed)] and listed and all(table.loc[i, "sex"] == sex for i in listed)
    shown = next(d.value for d in at.dataframe if "image_id" in d.value.columns)  # "As a table"
    assert shown["image_id"].tolist() == expected
    assert set(explorer.PATIENT_COLUMNS) <= set(shown.columns)


# ----------------------------------------------------------------------------- training


def submit_run(at: AppTest, **values) -> AppTest:
    for key, value in values.items():
        widget = at.text_input(key=key) if key.startswith("name") else at.number_input(key=key)
        widget.set_value(value)
    next(b for b in at.button if b.label == "Check settings and start").click().run()
    assert not at.exception
    return at


def wait_until_done(run_dir: Path) -> dict:
    """Poll the run's files; never leave a training process behind."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = runs.read_status(run_dir)
        if status.get("state") and not jobs.is_active(status):
            return status
        time.sleep(1)
    runs.stop(run_dir)
    pytest.fail(f"{run_dir.name} did not finish in {RUN_TIMEOUT_S} s:\n{jobs.log_tail(run_dir)}")


def test_out_of_range_settings_start_nothing(runs_dir, data_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data_dir))  # a dataset is found, so Start is enabled and the checks run
    at = submit_run(start_app("app_pages/training.py"), epochs_classifier=0, lr_classifier=5.0, height_classifier=10)
    message = texts(at.error)
    assert message.startswith("Not started:")
    for problem in ("epochs must be between 1 and 500", "learning rate", "resolution"):
        assert problem in message
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_training_without_the_full_dataset_says_so_at_the_form_and_starts_nothing(runs_dir, no_dataset):
    at = start_app("app_pages/training.py")
    notice = texts(at.main.warning)  # on the page beside the form, not only in the sidebar
    assert "Training needs the full HAM10000" in notice and "docs/data.md" in notice
    assert "doi.org/10.7910/DVN/DBW86T" in notice and "data/ham10000/" in notice
    start = next(b for b in at.button if b.label == "Check settings and start")
    assert start.disabled
    with pytest.raises(AppTestError, match="disabled"):  # AppTest, like a browser, cannot press it
        start.click()
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_training_with_the_dataset_can_start(runs_dir, data_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data_dir))
    at = start_app("app_pages/training.py")
    assert not next(b for b in at.button if b.label == "Check settings and start").disabled
    assert "Training needs the full HAM10000" not in texts(at.main.warning)


def test_the_segmenter_form_trains_on_the_chosen_pretrained_encoder(runs_dir, data_dir, fixture_split, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data_dir))
    monkeypatch.setenv(data.SPLIT_ENV, str(fixture_split))
    at = start_app("app_pages/training.py")
    at.selectbox(key="train_task").set_value("Segmenter: U-Net").run()
    at.selectbox(key="encoder_segmenter").set_value("lite0")
    at = submit_run(at, epochs_segmenter=1, limit_segmenter=16, height_segmenter=48, width_segmenter=64,
                    batch_segmenter=8)
    [run_dir] = list(runs_dir.iterdir())
    status = wait_until_done(run_dir)
    assert status["state"] == "finished", jobs.log_tail(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["encoder"] == "lite0" and config["pretrained"]["file"] == "efficientnet-lite0-57934424.pth"


def test_a_tiny_run_launches_finishes_and_can_be_promoted(runs_dir, data_dir, fixture_split, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data_dir))  # the app launches runs on the default data and split
    monkeypatch.setenv(data.SPLIT_ENV, str(fixture_split))
    at = start_app("app_pages/training.py")
    at.selectbox(key="colour_classifier").set_value("shades_of_gray")  # through to the promoted weights and Diagnose
    at = submit_run(at, epochs_classifier=1, limit_classifier=32, height_classifier=48,
                    width_classifier=64, batch_classifier=16, name_classifier="app test")
    [run_dir] = list(runs_dir.iterdir())
    try:
        assert run_dir.name.endswith("app-test") and "Started" in texts(at.success)
        next(b for b in at.button if b.label == "Check settings and start").click().run()
        assert "one run at a time" in texts(at.error) and len(list(runs_dir.iterdir())) == 1
    finally:
        status = wait_until_done(run_dir)
    assert status["state"] == "finished", jobs.log_tail(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["epochs"], config["limit"], config["height"], config["width"]) == (1, 32, 48, 64)
    assert config["colour"] == "shades_of_gray"

    at.run()
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[run_dir.name, "state"] == "finished"

    promote = next(b for b in at.button if b.label == "Export and use")
    promote.click().run()
    assert "Tick the confirmation box" in texts(at.warning) and not (run_dir / "weights").exists()

    at.checkbox(key="promote_sure").check()
    next(b for b in at.button if b.label == "Export and use").click().run()
    assert not at.exception
    assert (run_dir / "weights" / "manifest.json").is_file()
    assert at.session_state["active_weights_dir"] == str(run_dir / "weights")
    assert f"now active in this browser session: {run_dir / 'weights'}" in texts(at.success)

    at.switch_page("app_pages/diagnose.py").run()
    upload(at, "lesion.png", encoded(Image.new("RGB", (200, 150), (180, 120, 90)), "PNG"), "image/png")
    assert [weights for weights, _ in at.session_state["analyses"]] == [str(run_dir / "weights")]
    assert "These weights have no segmenter" in texts(at.info)  # the promoted run is a classifier only
