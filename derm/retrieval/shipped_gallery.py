"""The similar-case gallery that ships with the weights (weights/similar_gallery.npz): on a fresh clone
the first similar cases appear at once instead of after minutes of embedding.

Without the full dataset the gallery is the HAM10000 test split in data/ham10000-test (1,002 images).
The file holds, for those cases: the retrieval space (derm.retrieval.similar.RetrievalSpace: the split's mean
embedding and the first `dims` principal axes of its centred embeddings, fitted on these very cases,
no labels used) and each case's coordinates in it (fp16), with its image_id and pixel hash. With 64
dimensions that is about 0.8 MB instead of the 10 MB of the full 5,120-number embeddings.

The space is the one every gallery and query is measured in, the full dataset's train split included,
so the k and near-duplicate threshold chosen by `python -m derm similar-eval` (weights/similar.json,
which names the space it chose them in) hold for both galleries.

The file is tied to the retrieval networks' weight files (derm.retrieval.similar.weights_fingerprint): after one
of them changes it is ignored, and the same is built once into derm.data.cache_dir(), until
`build_shipped_gallery` rewrites it (export calls it; `python -m derm similar-gallery --ship` too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from derm import data
from derm.pipeline import Predictor
from derm.retrieval import similar
from derm.retrieval.similar import Progress, RetrievalSpace

GALLERY_FILE = "similar_gallery.npz"


@dataclass(frozen=True)
class ShippedGalleryConfig:
    """How compact the shipped gallery is."""

    dims: int = 64  # principal axes kept; HAM10000 val retrieval at 64 against all 5,120: docs/speed.md


@dataclass(eq=False)
class Reference:
    """The test-split cases in the retrieval space, and the space itself (see the module doc)."""

    image_ids: np.ndarray  # N image ids
    hashes: np.ndarray  # N pixel hashes (derm.retrieval.similar.pixel_hash)
    embeddings: np.ndarray  # N x dims, unit rows in `space`
    space: RetrievalSpace
    fingerprint: str  # derm.retrieval.similar.weights_fingerprint of the weights it was built with

    def rows_for(self, table: pd.DataFrame) -> np.ndarray | None:
        """The row of each of table's images, or None when some image is not among these cases."""
        rows = pd.Index(self.image_ids).get_indexer(table["image_id"].astype(str))
        return None if (rows < 0).any() else rows


def reference_table(weights_dir: Path, limit: int = 0) -> pd.DataFrame:
    """The shipped test split (at most `limit` or $DERM_GALLERY_LIMIT images): in every clone."""
    return similar.gallery_table(data.ImageSource(data.TEST_SUBSET_DIR, complete=False), weights_dir / "split.csv",
                                 limit)[0]


def build_reference(predictor: Predictor, limit: int = 0, config: ShippedGalleryConfig = ShippedGalleryConfig(),
                    progress: Progress | None = None, workers: int = 1) -> Reference:
    """Embed the shipped test split (cached) and fit the retrieval space on it."""
    table = reference_table(predictor.weights_dir, limit)
    raw = similar.embed_images(predictor, list(table["image_path"]), progress=progress, workers=workers)
    space = RetrievalSpace.fit(raw.embeddings, similar.blocks_of(predictor), config.dims)
    return Reference(table["image_id"].astype(str).to_numpy(), raw.hashes.astype(str),
                     space.map(raw.embeddings).astype(np.float16).astype(np.float32), space,
                     similar.weights_fingerprint(predictor.weights_dir))


def save(reference: Reference, path: Path) -> None:
    """Write a Reference as .npz (no pickle: strings as fixed-width bytes), atomically."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
    axes = np.zeros((0, 0), np.float16) if reference.space.axes is None else reference.space.axes.astype(np.float16)
    np.savez_compressed(tmp, image_ids=reference.image_ids.astype("S"), hashes=reference.hashes.astype("S"),
                        embeddings=reference.embeddings.astype(np.float16), mean=reference.space.mean.astype(np.float32),
                        axes=axes, blocks=np.array(reference.space.blocks, dtype=np.int64),
                        fingerprint=np.array(reference.fingerprint), space_id=np.array(reference.space.id))
    os.replace(tmp, path)


def load(path: Path, fingerprint: str) -> Reference | None:
    """The Reference in `path` when it was built for weights with this fingerprint, else None."""
    if not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        if str(stored["fingerprint"]) != fingerprint:
            return None
        axes = stored["axes"].astype(np.float32)
        space = RetrievalSpace(stored["mean"].astype(np.float32), tuple(int(b) for b in stored["blocks"]),
                               axes if axes.size else None)
        return Reference(stored["image_ids"].astype(str), stored["hashes"].astype(str),
                         stored["embeddings"].astype(np.float32), space, fingerprint)


def build_shipped_gallery(weights_dir: Path, config: ShippedGalleryConfig = ShippedGalleryConfig(),
                          progress: Progress | None = None, predictor: Predictor | None = None,
                          workers: int = 1) -> Path:
    """(Re)write weights_dir/similar_gallery.npz for the weights there. Call it whenever a retrieval
    network (derm.retrieval.similar.RETRIEVAL_NETWORKS) changes (`python -m derm similar-gallery --ship` after export;
scripts/train_shipped.sh does)."""
    weights_dir = Path(weights_dir)
    predictor = predictor or Predictor(weights_dir, load_gate=False)
    target = weights_dir / GALLERY_FILE
    save(build_reference(predictor, 0, config, progress, workers), target)
    return target


def cached_reference_path(predictor: Predictor, limit: int) -> Path:
    """Where a Reference for weights without a valid shipped file is kept."""
    size = len(reference_table(predictor.weights_dir, limit))
    return data.cache_dir() / f"similar_reference_{similar.weights_fingerprint(predictor.weights_dir)}_{size}.npz"


def reference_for(predictor: Predictor, limit: int = 0, progress: Progress | None = None,
                  workers: int = 1) -> Reference:
    """The weights' shipped Reference when it is valid, else one built once into the cache."""
    fingerprint = similar.weights_fingerprint(predictor.weights_dir)
    shipped = load(predictor.weights_dir / GALLERY_FILE, fingerprint)
    if shipped is not None:
        return shipped
    path = cached_reference_path(predictor, limit)
    cached = load(path, fingerprint)
    if cached is None:
        cached = build_reference(predictor, limit, progress=progress, workers=workers)
        save(cached, path)
    return cached


def reference_is_ready(predictor: Predictor, limit: int = 0) -> bool:
    """True when reference_for only reads a file."""
    fingerprint = similar.weights_fingerprint(predictor.weights_dir)
    return (load(predictor.weights_dir / GALLERY_FILE, fingerprint) is not None
            or cached_reference_path(predictor, limit).is_file())


def shipped_space_id(weights_dir: Path) -> str | None:
    """The id of the retrieval space shipped with these weights (None: no valid file): the space in
    which weights/similar.json's k and threshold were chosen, if they name it."""
    path = Path(weights_dir) / GALLERY_FILE
    if not path.is_file():
        return None
    return _stored_space_id(str(path), path.stat().st_mtime_ns, similar.weights_fingerprint(weights_dir))


@lru_cache(maxsize=8)
def _stored_space_id(path: str, mtime_ns: int, fingerprint: str) -> str | None:
    with np.load(path, allow_pickle=False) as stored:
        return str(stored["space_id"]) if str(stored["fingerprint"]) == fingerprint else None
