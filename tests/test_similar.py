"""Similar confirmed cases: a planted copy is found first, every exclusion drops it, the features
come from the classification's own pass, and the CLI prints one row per case."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from derm import cli, data
from derm.classes import CLASSES
from derm.imageio import load_image
from derm.pipeline import Predictor
from derm.retrieval import evaluate, similar

GALLERY_LIMIT = 40


def synthetic_gallery(n: int = 30, dim: int = 16, seed: int = 0) -> similar.Gallery:
    """Random unit embeddings; cases 5 and 6 are two images of one lesion."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lesions = [f"HAM_{i:07d}" for i in range(n)]
    lesions[6] = lesions[5]
    table = pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(n)], "lesion_id": lesions,
                          "label": [CLASSES[i % len(CLASSES)] for i in range(n)],
                          "dx_type": ["histo"] * n, "image_path": [f"/x/{i}.jpg" for i in range(n)]})
    return similar.Gallery(table, emb, np.array([f"h{i}" for i in range(n)]), "synthetic")


def planted_query(gallery: similar.Gallery, row: int = 5, noise: float = 0.0, **kwargs) -> similar.Query:
    q = gallery.embeddings[row] + noise * np.random.default_rng(1).normal(size=gallery.embeddings.shape[1])
    return similar.Query((q / np.linalg.norm(q)).astype(np.float32), **kwargs)


def test_a_planted_copy_is_found_first_and_every_exclusion_drops_it():
    gallery = synthetic_gallery()
    found = similar.search(gallery, planted_query(gallery), k=8, threshold=1.01)
    assert found["image_id"].iloc[0] == "ISIC_0000005"
    assert found["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert list(found["rank"]) == list(range(1, 9)) and found["similarity"].is_monotonic_decreasing

    by_lesion = similar.search(gallery, planted_query(gallery, lesion_id="HAM_0000005"), k=8, threshold=1.01)
    assert not {"ISIC_0000005", "ISIC_0000006"} & set(by_lesion["image_id"])  # the whole lesion goes
    by_pixels = similar.search(gallery, planted_query(gallery, hash="h5"), k=8, threshold=1.01)
    assert "ISIC_0000005" not in set(by_pixels["image_id"]) and len(by_pixels) == 8
    near = similar.search(gallery, planted_query(gallery, noise=0.02), k=8, threshold=0.97)
    assert "ISIC_0000005" not in set(near["image_id"])
    assert len(near) == 8


def test_the_vote_weighs_neighbours_by_similarity():
    shares = similar.vote(np.array([[0, 1, 1]]), np.array([[0.9, 0.3, 0.3]]))[0]
    assert shares[0] == pytest.approx(0.6) and shares[1] == pytest.approx(0.4) and shares.sum() == pytest.approx(1)
    assert similar.vote(np.array([[2]]), np.array([[-0.5]]))[0] == pytest.approx(np.full(7, 1 / 7))


def test_the_embedding_is_a_mean_of_per_network_cosines():
    rng = np.random.default_rng(0)
    a = {"r18": rng.normal(size=(1, 4)), "r50": rng.normal(size=(1, 9))}
    b = {"r18": rng.normal(size=(1, 4)), "r50": rng.normal(size=(1, 9))}
    cos = [float(a[n][0] @ b[n][0] / np.linalg.norm(a[n]) / np.linalg.norm(b[n])) for n in a]
    ea, eb = similar.embedding(a), similar.embedding(b)
    assert np.linalg.norm(ea) == pytest.approx(1, abs=1e-6)
    assert float(ea[0] @ eb[0]) == pytest.approx(np.mean(cos), abs=1e-5)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def test_real_gallery_finds_a_shipped_image_itself_unless_excluded(tiny_weights, data_dir, own_cache):
    predictor = Predictor(tiny_weights)
    source = data.ImageSource(data_dir, complete=False)
    calls = []
    gallery = similar.build_gallery(predictor, source, limit=GALLERY_LIMIT, progress=lambda d, t: calls.append((d, t)))
    assert len(gallery) == GALLERY_LIMIT and calls[-1] == (GALLERY_LIMIT, GALLERY_LIMIT)
    row = gallery.table.iloc[7]
    rgb = load_image(row["image_path"])
    result = predictor.analyse(rgb)  # the features come from the classification's own pass
    assert set(result.features) == set(predictor.classifiers)
    query = similar.query_for(predictor, rgb, result.features)
    assert query.embedding == pytest.approx(similar.query_for(predictor, rgb).embedding, abs=1e-3)

    plain = similar.search(gallery, similar.Query(query.embedding), k=8, threshold=1.01)
    assert plain["image_id"].iloc[0] == row["image_id"] and plain["similarity"].iloc[0] > 0.99
    for kept_out in (query, similar.Query(query.embedding, lesion_id=row["lesion_id"])):
        assert row["image_id"] not in set(similar.search(gallery, kept_out, k=8, threshold=1.01)["image_id"])
    assert row["image_id"] not in set(similar.search(gallery, similar.Query(query.embedding), 8, 0.99)["image_id"])
    calls.clear()
    again = similar.build_gallery(predictor, source, limit=GALLERY_LIMIT, progress=lambda d, t: calls.append((d, t)))
    assert not calls and np.allclose(again.embeddings, gallery.embeddings)  # from the cache


def test_cli_prints_one_csv_row_per_case_without_the_image_itself(tiny_weights, data_dir, own_cache, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "no-dataset"))  # as in a fresh clone: the shipped split
    image_id = data.load_table(data_dir)["image_id"].iloc[3]  # in the first GALLERY_LIMIT gallery images
    code = cli.main(["similar", f"{image_id}.jpg", "--weights", str(tiny_weights), "--k", "5", "--format", "csv",
                     "--limit", str(GALLERY_LIMIT)])
    out = capsys.readouterr().out
    assert code == 0
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == ["query", "rank", "image_id", "dx", "dx_type", "similarity"]
    assert len(frame) == 5 and list(frame["rank"]) == [1, 2, 3, 4, 5]
    assert image_id not in set(frame["image_id"]) and set(frame["dx"]) <= set(CLASSES)


def test_the_threshold_balances_lost_neighbours_against_self_matches():
    other = np.linspace(0.5, 0.95, 100)  # nearest other-lesion similarities
    own = np.linspace(0.9, 1.0, 100)  # originals against their own copy
    t = evaluate.equal_error_threshold(other, own)
    assert abs((other > t).mean() - (own <= t).mean()) <= 0.02 and 0.9 <= t <= 0.95


def test_card_lines_render_a_short_table(tmp_path):
    report = {"command": "python -m derm similar-eval", "gallery": {"name": "HAM10000 train split", "n": 8011}, "k": 10,
              "duplicate_threshold": {"value": 0.95, "rule": "r", "same_lesion_pairs": 10, "same_lesion_pairs_above": 2,
                                     "val_losing_nearest_neighbour": 0.01, "originals_finding_themselves": 0.02,
                                     "originals_self_similarity": {"n": 139, "min": 0.9, "median": 0.99}},
              "sets": {name: {"n": 100, "knn": {"balanced_accuracy": 0.5, "macro_auc": 0.8, "precision_at_8": 0.6},
                              "softmax": {"balanced_accuracy": 0.6, "macro_auc": 0.9}}
                       for name in ("HAM10000 val", "HAM10000 test", "derm7pt")}}
    evaluate.write(report, tmp_path / "similar.json")
    lines = evaluate.card_lines(tmp_path)
    assert len(lines) <= 20 and sum(line.startswith("| derm7pt |") for line in lines) == 1
    assert any("similar-eval" in line for line in lines)
    assert evaluate.card_lines(tmp_path / "missing") == []


def test_embedding_on_two_processes_gives_this_process_answer_in_order(tiny_weights, data_dir, own_cache):
    predictor = Predictor(tiny_weights, load_gate=False)
    paths = list(data.load_table(data_dir)["image_path"].head(10))
    for with_probabilities in (False, True):
        here = similar.embed_images(predictor, paths, with_probabilities, batch_size=3, use_cache=False)
        calls = []
        there = similar.embed_images(predictor, paths, with_probabilities, progress=lambda d, t: calls.append((d, t)),
                                     batch_size=3, use_cache=False, workers=2)
        assert list(there.hashes) == list(here.hashes)  # the images in their order
        np.testing.assert_allclose(there.embeddings, here.embeddings, atol=1e-4)
        if with_probabilities:
            np.testing.assert_allclose(there.probabilities, here.probabilities, atol=1e-4)
        assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]


def test_the_pooled_width_is_read_from_either_kind_of_classifier():
    from derm.models import build_classifier, classifier_head

    assert classifier_head(build_classifier("resnet18")).in_features == 512
    assert classifier_head(build_classifier("lite0")).in_features == 1280  # an EfficientNet-Lite's `_fc`
