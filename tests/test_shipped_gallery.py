"""The similar-case gallery shipped with the weights: the reduced space keeps the neighbours, a shipped
file is read instead of embedding anything and finds what embedding finds, it goes stale when a
retrieval network changes (not when another member is added), and similar.json's k holds only in the
space it was chosen in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from derm import cli, data
from derm.imageio import load_image
from derm.pipeline import Predictor
from derm.retrieval import cli as retrieval_cli
from derm.retrieval import shipped_gallery, similar
from derm.retrieval.similar import RetrievalSpace

GALLERY_LIMIT = 40


def low_rank_embeddings(n: int = 300, blocks: tuple[int, ...] = (8, 24), rank: int = 6, seed: int = 0) -> np.ndarray:
    """Raw embeddings like the ensemble's: per-network unit blocks sharing a large common component and
    varying in a few directions only."""
    rng = np.random.default_rng(seed)
    parts = []
    for width in blocks:
        common = np.abs(rng.normal(size=width)) * 3
        part = common + rng.normal(size=(n, rank)) @ rng.normal(size=(rank, width)) + 0.05 * rng.normal(size=(n, width))
        parts.append(part / np.linalg.norm(part, axis=1, keepdims=True))
    return (np.concatenate(parts, axis=1) / np.sqrt(len(blocks))).astype(np.float32)


def nearest(embeddings: np.ndarray, k: int) -> np.ndarray:
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :k]


def test_the_reduced_space_keeps_each_case_s_nearest_neighbours():
    blocks = (8, 24)
    raw = low_rank_embeddings(blocks=blocks)
    full = RetrievalSpace(raw.mean(axis=0), blocks).map(raw)
    space = RetrievalSpace.fit(raw, blocks, dims=12)
    reduced = space.map(raw)
    assert reduced.shape == (len(raw), 12) and space.dims == 12
    assert np.allclose(np.linalg.norm(reduced, axis=1), 1, atol=1e-5)
    shared = [len(set(a) & set(b)) / 5 for a, b in zip(nearest(full, 5), nearest(reduced, 5))]
    assert np.mean(shared) > 0.9
    assert space.id == RetrievalSpace.fit(raw, blocks, dims=12).id != RetrievalSpace.fit(raw, blocks, dims=4).id


@pytest.fixture
def weights_copy(tiny_weights, tmp_path, monkeypatch) -> Path:
    """The tiny weights in a folder of this test's own, with its own cache and a 40-image gallery."""
    target = tmp_path / "weights"
    shutil.copytree(tiny_weights, target)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache-build"))
    monkeypatch.setenv(similar.GALLERY_LIMIT_ENV, str(GALLERY_LIMIT))
    return target


def ship(weights: Path, dims: int) -> Path:
    assert cli.main(["similar-gallery", "--ship", "--weights", str(weights), "--dims", str(dims)]) == 0
    return weights / shipped_gallery.GALLERY_FILE


def test_a_shipped_gallery_is_read_not_embedded_and_finds_what_embedding_finds(weights_copy, tmp_path, monkeypatch):
    path = ship(weights_copy, dims=16)
    with np.load(path, allow_pickle=False) as stored:  # compact: 16 fp16 numbers per case, 16 fp16 axes
        assert stored["embeddings"].dtype == np.float16 and stored["embeddings"].shape == (GALLERY_LIMIT, 16)
        assert stored["axes"].dtype == np.float16 and stored["axes"].shape == (16, len(stored["mean"]))
    fresh_cache = tmp_path / "cache-fresh"
    monkeypatch.setenv(data.CACHE_ENV, str(fresh_cache))  # as on a fresh clone: nothing embedded yet
    predictor = Predictor(weights_copy)
    source = data.ImageSource(data.TEST_SUBSET_DIR, complete=False)
    assert similar.gallery_is_cached(predictor, source)
    calls = []
    gallery = similar.build_gallery(predictor, source, progress=lambda done, total: calls.append(done))
    assert not calls and not list(fresh_cache.glob("similar_*"))  # read from the file: nothing embedded
    assert len(gallery) == GALLERY_LIMIT and gallery.embeddings.shape == (GALLERY_LIMIT, 16)

    row = gallery.table.iloc[7]
    rgb = load_image(row["image_path"])
    query = similar.query_for(predictor, rgb, predictor.analyse(rgb).features)
    found = similar.search(gallery, similar.Query(query.embedding), k=8, threshold=1.01)
    assert found["image_id"].iloc[0] == row["image_id"] and found["similarity"].iloc[0] > 0.99
    assert row["image_id"] not in set(similar.search(gallery, query, k=8, threshold=1.01)["image_id"])  # same pixels

    path.unlink()  # without the file: the same space is built into the cache, with progress, and finds the same
    assert not similar.gallery_is_cached(predictor, source)
    rebuilt = similar.build_gallery(predictor, source, progress=lambda done, total: calls.append(done))
    assert calls and list(fresh_cache.glob("similar_reference_*"))
    again = similar.search(rebuilt, similar.Query(query.embedding), k=8, threshold=1.01)
    assert again["image_id"].iloc[0] == found["image_id"].iloc[0]
    # a space of its own (fp32, its own dimensions): near-ties may swap places, the neighbours stay the same cases
    assert len(set(again["image_id"]) & set(found["image_id"])) >= 6


def test_a_changed_retrieval_network_makes_the_file_stale_but_another_member_does_not(weights_copy):
    ship(weights_copy, dims=8)
    fingerprint = similar.weights_fingerprint(weights_copy)
    stored_space = shipped_gallery.shipped_space_id(weights_copy)
    assert stored_space is not None
    manifest_path = weights_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert set(similar.retrieval_networks(manifest)) <= set(similar.RETRIEVAL_NETWORKS)

    extra = dict(manifest["models"]["resnet18"], file="extra.safetensors")  # a member retrieval does not read
    shutil.copyfile(weights_copy / manifest["models"]["resnet18"]["file"], weights_copy / "extra.safetensors")
    manifest["models"]["lite0"] = extra
    manifest_path.write_text(json.dumps(manifest))
    assert similar.weights_fingerprint(weights_copy) == fingerprint
    assert shipped_gallery.shipped_space_id(weights_copy) == stored_space

    manifest["models"]["resnet18"]["normalization"]["mean"][0] += 0.01  # a retrieval network sees other inputs
    manifest_path.write_text(json.dumps(manifest))
    assert similar.weights_fingerprint(weights_copy) != fingerprint
    assert shipped_gallery.shipped_space_id(weights_copy) is None
    assert shipped_gallery.load(weights_copy / shipped_gallery.GALLERY_FILE,
                                similar.weights_fingerprint(weights_copy)) is None


def test_k_and_threshold_chosen_on_validation_hold_only_in_their_space(weights_copy):
    ship(weights_copy, dims=8)
    chosen = {"weights": similar.weights_fingerprint(weights_copy), "space": shipped_gallery.shipped_space_id(weights_copy),
              "k": 3, "duplicate_threshold": {"value": 0.9}}
    (weights_copy / similar.REPORT_FILE).write_text(json.dumps(chosen))
    config = similar.SimilarConfig.from_weights(weights_copy)
    assert (config.k, config.duplicate_threshold) == (3, 0.9)
    (weights_copy / similar.REPORT_FILE).write_text(json.dumps({**chosen, "space": "another"}))
    assert similar.SimilarConfig.from_weights(weights_copy) == similar.SimilarConfig()


def test_the_command_s_defaults_are_the_module_s():
    assert retrieval_cli.DEFAULT_DIMS == shipped_gallery.ShippedGalleryConfig().dims
    assert retrieval_cli.GALLERY_FILE == shipped_gallery.GALLERY_FILE


def test_the_gallery_in_weights_matches_the_shipped_networks_and_test_split():
    weights = REPO / "weights"
    path = weights / shipped_gallery.GALLERY_FILE
    if not (weights / "manifest.json").is_file():
        pytest.skip("no shipped weights")
    assert path.is_file(), "rebuild it: python -m derm similar-gallery --ship"
    assert path.stat().st_size < 2_000_000
    reference = shipped_gallery.load(path, similar.weights_fingerprint(weights))
    assert reference is not None, "weights/ changed since the gallery was built: python -m derm similar-gallery --ship"
    table = data.load_table(data.TEST_SUBSET_DIR)
    assert reference.rows_for(table) is not None and len(reference.image_ids) == len(table)
