"""Similar confirmed cases: content-based retrieval with the ensemble's own features.

A dermatologist judges a lesion against confirmed cases; retrieval with a diagnostic network's features
is about as accurate as its softmax and shows *why* an answer may be right or wrong (Tschandl et al.,
Br J Dermatol 2019). Readers are helped most by the probabilities themselves (Tschandl et al., Nat Med
2020), so the cases are shown beside the probabilities, never instead of them.

Embedding: the global-average-pooled features (the input to the last layer) of two of the ensemble's
networks (RETRIEVAL_NETWORKS that the weights hold: the second EfficientNet-Lite0 and the first
ResNet18), each L2-normalised, concatenated and divided by sqrt(number of networks). Every network then
weighs the same whatever its width (1,280 vs 512), the cosine of two embeddings is the mean of the
networks' own cosines, and the features come from the forward pass the classification already runs
(identity view; Predictor.analyse keeps them), so a query costs one matrix product. Which networks:
`python bench/similar_networks.py` scores every subset of the ensemble on HAM10000 val (k chosen by
cross-validation inside val) against the time its gallery takes to embed; these two retrieve better
than the three ResNets used before (val 0.714 against 0.662; derm7pt train+valid, balanced accuracy of the
vote 0.570 against 0.400) in a third of their time. Pooled features share a large common component (raw
cosines lie close to 1), so each network's block is centred on a reference set's mean block and
renormalised before the cosine (with the ResNets, on HAM10000 val against train, that raised the vote's
balanced accuracy at its best k from 0.649 to 0.697).
The centred embeddings are then projected on the reference set's first principal axes and
renormalised (RetrievalSpace): thousands of numbers per case (1,792 with the shipped networks) become a few dozen, which is what lets a gallery
ship inside weights/ (derm.retrieval.shipped_gallery, where the reference set and the numbers are).

Gallery: the confirmed HAM10000 cases the models trained on (the train split) when the full dataset is
present, else the test split shipped in data/ham10000-test, whose embeddings ship with the weights
(weights/similar_gallery.npz). Others are computed once per weights version and gallery file list and
cached in derm.data.cache_dir() (never in git).

Exclusions, so that a dataset image does not just find itself: its own lesion (same lesion_id), any
gallery image with the same pixels at the models' input, and any gallery image more similar than the
near-duplicate threshold (chosen on HAM10000 val and the dataset's full-size originals by
`python -m derm similar-eval`, kept in weights/similar.json; derm.retrieval.evaluate says how).

"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from derm import catalog, data
from derm.classes import CLASSES, NUM_CLASSES
from derm.imageio import load_image
from derm.pipeline import Predictor, classifier_input
from derm.weights import file_sha256

EMBEDDING_VERSION = "pooled-l2-concat-v1"  # change when the embedding's definition changes: new caches
# whose features the embedding holds: chosen on HAM10000 val for retrieval quality per second of embedding
# (bench/similar_networks.py); weights without either fall back to every classifier
RETRIEVAL_NETWORKS = ("efficientnet_2", "resnet18")
REPORT_FILE = "similar.json"
GALLERY_LIMIT_ENV = "DERM_GALLERY_LIMIT"  # at most this many gallery images (quick checks, tests)
Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class SimilarConfig:
    """How many cases are shown, how many vote, and when a gallery case counts as the query itself.

    `from_weights` reads k and the threshold chosen on validation (weights/similar.json) when they were
    chosen for these very weights; otherwise these defaults hold.
    """

    shown: int = 8
    k: int = 8  # neighbours in the similarity-weighted vote
    duplicate_threshold: float = 0.98  # cosine above which a gallery image is taken for the query itself
    batch_size: int = 32

    @classmethod
    def from_weights(cls, weights_dir: Path) -> "SimilarConfig":
        path = Path(weights_dir) / REPORT_FILE
        if not path.is_file():
            return cls()
        chosen = json.loads(path.read_text())
        if chosen.get("weights") != weights_fingerprint(weights_dir) or chosen.get("space") != _shipped_space_id(weights_dir):
            return cls()  # chosen for other weights or another retrieval space: their similarities mean something else
        return cls(k=int(chosen["k"]), duplicate_threshold=float(chosen["duplicate_threshold"]["value"]))


# ----------------------------------------------------------------------------- embeddings


def _shipped_space_id(weights_dir: Path) -> str | None:
    from derm.retrieval.shipped_gallery import shipped_space_id  # that module builds on this one

    return shipped_space_id(Path(weights_dir))


def retrieval_networks(manifest: dict) -> tuple[str, ...]:
    """The networks whose features the embedding holds: RETRIEVAL_NETWORKS present in these weights
    (weights without any of them: every classifier)."""
    models = manifest["models"]
    named = tuple(n for n in RETRIEVAL_NETWORKS if n in models)
    return named or tuple(n for n, entry in models.items() if entry["arch"] != "unet")


def retrieval_features(predictor: Predictor, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The retrieval networks' share of every classifier's features (Result.features holds them all)."""
    return {n: features[n] for n in retrieval_networks(predictor.manifest)}


def embedding(features: dict[str, np.ndarray]) -> np.ndarray:
    """N x D unit vectors from each network's pooled features (N x C_m), in name order: each network's
    features L2-normalised, concatenated, over sqrt(networks), so cosine = mean of per-network cosines."""
    names = sorted(features)
    parts = [np.asarray(features[n], dtype=np.float32).reshape(-1, np.shape(features[n])[-1]) for n in names]
    parts = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts]
    return np.concatenate(parts, axis=1) / np.sqrt(len(parts))


def pixel_hash(rgb: np.ndarray, input_hw: tuple[int, int]) -> str:
    """The image as the models see it (landscape, cropped, resized), hashed: same pixels, same hash."""
    return hashlib.sha1(classifier_input(rgb, input_hw).tobytes()).hexdigest()[:16]


def input_hw(predictor: Predictor) -> tuple[int, int]:
    return predictor.classifiers[retrieval_networks(predictor.manifest)[0]].input_hw


def weights_fingerprint(weights_dir: Path) -> str:
    """Short hash of the retrieval networks' weight files (their contents) and how they are used
    (manifest): a gallery's embeddings hold while it is unchanged, whatever else the ensemble holds."""
    weights_dir = Path(weights_dir)
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    digest = hashlib.sha256(EMBEDDING_VERSION.encode())
    for name in sorted(retrieval_networks(manifest)):
        entry = manifest["models"][name]
        digest.update(f"{name}:{file_sha256(weights_dir / entry['file'])}:{entry['input_hw']}:"
                      f"{entry['normalization']}:{entry.get('colour', 'none')}".encode())
    return digest.hexdigest()[:16]


def files_fingerprint(paths: list[str]) -> str:
    """Changes when the list of files, or any file's size or modification time, changes."""
    digest = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p}:{st.st_size}:{int(st.st_mtime)}".encode())
    return digest.hexdigest()[:16]


@dataclass
class Embedded:
    """Images run through the ensemble: embeddings, same-pixel hashes and (optionally) the ensemble's
    probabilities from the same pass."""

    embeddings: np.ndarray  # N x D float32, unit rows
    hashes: np.ndarray  # N pixel hashes
    probabilities: np.ndarray | None = None  # N x 7 ensemble probabilities


def ensemble_fingerprint(weights_dir: Path) -> str:
    """Short hash of every classifier file and of the manifest: what the ensemble's probabilities depend on."""
    weights_dir = Path(weights_dir)
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for entry in manifest["models"].values():
        digest.update(file_sha256(weights_dir / entry["file"]).encode())
    return digest.hexdigest()[:16]


def cache_path(predictor: Predictor, paths: list[str], with_probabilities: bool = False) -> Path:
    """Where embed_images keeps these images' embeddings (and probabilities) for these weights."""
    weights = weights_fingerprint(predictor.weights_dir)
    if with_probabilities:
        weights += ":" + ensemble_fingerprint(predictor.weights_dir)
    key = hashlib.sha1(f"{weights}:{files_fingerprint(paths)}:{with_probabilities}".encode()).hexdigest()[:16]
    return data.cache_dir() / f"similar_{len(paths)}_{key}.npz"


def embed_batch(predictor: Predictor, paths: list[str], with_probabilities: bool = False
                ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(embeddings, pixel hashes, ensemble probabilities or None) of a few image files."""
    images = [load_image(p) for p in paths]
    hashes = [pixel_hash(rgb, input_hw(predictor)) for rgb in images]
    if not with_probabilities:
        return embedding(predictor.model_features(images, retrieval_networks(predictor.manifest))), hashes, None
    features: dict[str, np.ndarray] = {}
    probabilities = predictor.ensemble(predictor.model_probabilities(images, features))[0]
    return embedding(retrieval_features(predictor, features)), hashes, probabilities


def embed_images(predictor: Predictor, paths: list[str], with_probabilities: bool = False,
                 progress: Progress | None = None, batch_size: int = 32, use_cache: bool = True,
                 workers: int = 1) -> Embedded:
    """Embed image files in batches, cached per weights version and file list (fp16 on disk); with
    workers > 1 on that many processes (derm.batch_workers: the commands use every core, the app one).

    Without probabilities only the identity view of the retrieval networks runs (no TTA): a gallery
    needs their features alone. With them, each batch goes through the ensemble as the app runs it and
    the features come from that pass.
    """
    from derm.batch_workers import map_batches

    target = cache_path(predictor, paths, with_probabilities)
    if use_cache and target.is_file():
        stored = np.load(target)
        return Embedded(stored["embeddings"].astype(np.float32), stored["hashes"],
                        stored["probabilities"] if "probabilities" in stored else None)
    batches = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    embeddings, hashes, probabilities, done = [], [], [], 0
    for part, part_hashes, part_probabilities in map_batches(
            predictor, partial(embed_batch, with_probabilities=with_probabilities), batches, workers):
        embeddings.append(part)
        hashes += part_hashes
        if part_probabilities is not None:
            probabilities.append(part_probabilities)
        done += len(part_hashes)
        if progress is not None:
            progress(done, len(paths))
    out = Embedded(np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32), np.array(hashes),
                   np.concatenate(probabilities) if probabilities else None)
    if use_cache:
        tmp = target.with_suffix(f".tmp{os.getpid()}.npz")
        extra = {"probabilities": out.probabilities} if out.probabilities is not None else {}
        np.savez(tmp, embeddings=out.embeddings.astype(np.float16), hashes=out.hashes, **extra)
        os.replace(tmp, target)
        out.embeddings = out.embeddings.astype(np.float16).astype(np.float32)  # as a later load sees them
    return out


# ----------------------------------------------------------------------------- the gallery


def centre(embeddings: np.ndarray, mean: np.ndarray, blocks: tuple[int, ...]) -> np.ndarray:
    """Each network's block minus a reference set's mean block, renormalised, over sqrt(networks)."""
    embeddings = np.asarray(embeddings, dtype=np.float32).reshape(-1, sum(blocks))
    parts, start = [], 0
    for width in blocks:
        part = embeddings[:, start:start + width] - mean[start:start + width]
        parts.append(part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12))
        start += width
    return np.concatenate(parts, axis=1) / np.sqrt(len(blocks))


@dataclass(frozen=True, eq=False)
class RetrievalSpace:
    """Where similarities are measured (see the module doc): each network's block of a raw embedding
    centred on a reference set's mean block and renormalised, then its coordinates on the reference
    set's first principal axes, renormalised. A case's similarity to a query is their cosine there."""

    mean: np.ndarray  # D: the reference set's mean raw embedding
    blocks: tuple[int, ...]  # each network's width in the raw embedding
    axes: np.ndarray | None = None  # d x D unit rows: the centred reference set's first principal axes; None: all D

    @classmethod
    def fit(cls, raw: np.ndarray, blocks: tuple[int, ...], dims: int) -> "RetrievalSpace":
        """The space of a reference set's raw embeddings (N x D), its axes rounded to fp16 as stored."""
        raw = np.asarray(raw, dtype=np.float32)
        mean = raw.mean(axis=0)
        # the axes that keep most of the centred embeddings' energy (SVD without a second centring): the
        # ones that keep their dot products, hence the cosines, best
        _, _, vt = np.linalg.svd(centre(raw, mean, blocks), full_matrices=False)
        return cls(mean, tuple(int(b) for b in blocks), vt[:dims].astype(np.float16).astype(np.float32))

    @property
    def dims(self) -> int:
        return sum(self.blocks) if self.axes is None else len(self.axes)

    @property
    def id(self) -> str:
        """Short hash of the space: k and the threshold chosen in one space hold in that space only."""
        digest = hashlib.sha1(np.ascontiguousarray(self.mean, dtype=np.float32).tobytes())
        digest.update(str(self.blocks).encode())
        if self.axes is not None:
            digest.update(np.ascontiguousarray(self.axes, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def map(self, raw: np.ndarray) -> np.ndarray:
        """Raw embeddings (N x D) as unit rows in this space (N x dims)."""
        centred = centre(raw, self.mean, self.blocks)
        if self.axes is None:
            return centred
        reduced = centred @ self.axes.T
        return reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)


@dataclass
class Gallery:
    """Confirmed cases and their embeddings in the search space (`space`; None: raw embeddings compared
    as they are): table rows (image_id, lesion_id, label, dx_type, image_path) in the order of the rows."""

    table: pd.DataFrame
    embeddings: np.ndarray
    hashes: np.ndarray
    description: str
    space: RetrievalSpace | None = None

    def project(self, queries: np.ndarray) -> np.ndarray:
        """Raw query embeddings (Q x D) into the gallery's search space."""
        queries = np.asarray(queries, dtype=np.float32)
        if self.space is None:
            return queries.reshape(-1, self.embeddings.shape[1])
        return self.space.map(queries.reshape(-1, sum(self.space.blocks)))

    def __len__(self) -> int:
        return len(self.table)


def blocks_of(predictor: Predictor) -> tuple[int, ...]:
    """Each retrieval network's pooled width, in the embedding's (name) order."""
    from derm.models import classifier_head

    return tuple(classifier_head(predictor.classifiers[n].model).in_features
                 for n in sorted(retrieval_networks(predictor.manifest)))


def gallery_table(source: data.ImageSource, split_path: Path, limit: int = 0) -> tuple[pd.DataFrame, str]:
    """The train split of the full dataset, else every image of the shipped test split; at most
    `limit` (or $DERM_GALLERY_LIMIT) images."""
    limit = limit or int(os.environ.get(GALLERY_LIMIT_ENV) or 0)
    table = data.load_table(source.path)
    if source.complete:
        table = data.attach_split(table, split_path)
        table = table[table["split"] == "train"]
        description = "HAM10000 train split"
    else:
        description = "HAM10000 test split shipped with derm"
    table = table.head(limit) if limit else table
    return table.reset_index(drop=True), description


def build_gallery(predictor: Predictor, source: data.ImageSource | None = None, limit: int = 0,
                  progress: Progress | None = None, workers: int = 1) -> Gallery:
    """The gallery for these weights in their retrieval space: the shipped test split straight from
    weights/similar_gallery.npz; any other from the embedding cache, or embedded now (`progress`, on
    `workers` processes)."""
    from derm.retrieval import shipped_gallery  # that module builds on this one

    source = source or data.image_source()
    table, description = gallery_table(source, predictor.weights_dir / "split.csv", limit)
    reference = shipped_gallery.reference_for(predictor, limit, progress, workers)
    rows = None if source.complete else reference.rows_for(table)
    if rows is not None:
        return Gallery(table, reference.embeddings[rows], reference.hashes[rows], description, reference.space)
    embedded = embed_images(predictor, list(table["image_path"]), progress=progress, workers=workers)
    return Gallery(table, reference.space.map(embedded.embeddings), embedded.hashes, description, reference.space)


def gallery_is_cached(predictor: Predictor, source: data.ImageSource | None = None) -> bool:
    """True when build_gallery will only read files (no embedding to wait for)."""
    return gallery_status(predictor, source)[0]


def gallery_status(predictor: Predictor, source: data.ImageSource | None = None) -> tuple[bool, int]:
    """(gallery_is_cached, number of confirmed cases in the gallery), from one reading of the table."""
    from derm.retrieval import shipped_gallery

    source = source or data.image_source()
    table, _ = gallery_table(source, predictor.weights_dir / "split.csv")
    if not shipped_gallery.reference_is_ready(predictor):
        return False, len(table)
    return not source.complete or cache_path(predictor, list(table["image_path"])).is_file(), len(table)


# ----------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Query:
    """One image to find cases for: its embedding, pixel hash and, for a HAM10000 image, its lesion."""

    embedding: np.ndarray  # D
    hash: str = ""
    lesion_id: str | None = None


def similarities(gallery: Gallery, queries: np.ndarray) -> np.ndarray:
    """Cosine similarity of each query with every gallery case in the retrieval space: one matrix
    product (Q x N).

    Exact and fast enough here (10,000 cases x a few dozen dimensions: well under a millisecond per
    query); for millions of cases an approximate index (faiss, e.g. IVF or HNSW) would take over.
    """
    return gallery.project(queries) @ gallery.embeddings.T


def excluded(gallery: Gallery, sims: np.ndarray, query: Query, threshold: float) -> np.ndarray:
    """Which gallery cases are the query itself: its lesion, its pixels, or a near-duplicate."""
    out = sims > threshold
    if query.hash:
        out |= gallery.hashes == query.hash
    if query.lesion_id is not None:
        out |= (gallery.table["lesion_id"] == query.lesion_id).to_numpy()
    return out


def top_k(sims: np.ndarray, drop: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar cases not dropped, most similar first."""
    sims = np.where(drop, -np.inf, sims)
    k = min(k, int((~drop).sum()))
    if k <= 0:
        return np.zeros(0, dtype=int)
    best = np.argpartition(-sims, k - 1)[:k]
    return best[np.argsort(-sims[best], kind="stable")]


def search(gallery: Gallery, query: Query, k: int, threshold: float) -> pd.DataFrame:
    """The k most similar confirmed cases: rank, image_id, dx, dx_type, similarity, lesion_id, image_path."""
    sims = similarities(gallery, query.embedding[None])[0]
    best = top_k(sims, excluded(gallery, sims, query, threshold), k)
    rows = gallery.table.iloc[best]
    return pd.DataFrame({"rank": np.arange(1, len(best) + 1), "image_id": rows["image_id"].to_numpy(),
                         "dx": rows["label"].to_numpy(), "dx_type": rows["dx_type"].to_numpy(),
                         "similarity": sims[best].round(4), "lesion_id": rows["lesion_id"].to_numpy(),
                         "image_path": rows["image_path"].to_numpy()})


def vote(labels: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Similarity-weighted k-NN vote: per query, each class's share of its neighbours' similarity
    (labels and sims Q x k; negative similarities count zero). Rows sum to 1 (uniform if all zero)."""
    labels, weights = np.atleast_2d(labels), np.clip(np.atleast_2d(sims), 0.0, None)
    scores = np.zeros((len(labels), NUM_CLASSES))
    np.add.at(scores, (np.repeat(np.arange(len(labels)), labels.shape[1]), labels.ravel()), weights.ravel())
    totals = scores.sum(axis=1, keepdims=True)
    return np.where(totals > 0, scores / np.where(totals > 0, totals, 1), 1.0 / NUM_CLASSES)


def case_vote(cases: pd.DataFrame, k: int) -> dict[str, float]:
    """The vote of the first k returned cases, as {class: share}."""
    first = cases.head(k)
    shares = vote(first["dx"].map(CLASSES.index).to_numpy()[None], first["similarity"].to_numpy()[None])[0]
    return {c: float(s) for c, s in zip(CLASSES, shares)}


@dataclass
class SimilarCases:
    """What the page and the CLI show for one image: the cases, the vote and its answer."""

    cases: pd.DataFrame
    vote: dict[str, float]
    k: int

    @property
    def label(self) -> str:
        return max(self.vote, key=self.vote.get)

    def agrees_with(self, label: str) -> bool:
        return self.label == label


def find_similar(gallery: Gallery, query: Query, config: SimilarConfig) -> SimilarCases:
    """The cases to show (at least `shown`, at least k for the vote) and the k-NN vote."""
    cases = search(gallery, query, max(config.shown, config.k), config.duplicate_threshold)
    return SimilarCases(cases, case_vote(cases, config.k), config.k)


def query_for(predictor: Predictor, rgb: np.ndarray, features: dict[str, np.ndarray] | None = None,
              lesion_id: str | None = None) -> Query:
    """A Query from an image, with the pooled features of its analysis (Result.features) when at hand,
    else from the identity-view features."""
    names = retrieval_networks(predictor.manifest)
    features = ({n: features[n] for n in names} if features is not None else
                {n: f[0] for n, f in predictor.model_features([rgb], names).items()})
    return Query(embedding(features)[0], pixel_hash(rgb, input_hw(predictor)), lesion_id)


def lesion_of(table: pd.DataFrame | None, name: str) -> str | None:
    """The lesion_id of a HAM10000 image named by id or file name (ISIC_0024306.jpg), else None."""
    if table is None:
        return None
    row = catalog.find_image(table, Path(name).stem if Path(name).suffix else name)
    return None if row is None else str(row["lesion_id"])


def resolve_image_path(text: str, table: pd.DataFrame | None) -> Path:
    """A file as given, or, when no such file exists, the HAM10000 image it names (its original if present)."""
    path = Path(text)
    if path.is_file() or table is None:
        return path
    row = catalog.find_image(table, path.stem if path.suffix else text)
    return catalog.image_path(row) if row is not None else path


def ham_table() -> pd.DataFrame | None:
    """The metadata of the HAM10000 images at hand (full, or the shipped test split), to know a
    named image's lesion; None without either."""
    try:
        return data.load_table(data.image_source().path)
    except data.DataNotFoundError:
        return None


def tqdm_progress(desc: str) -> Progress:
    """A progress callback drawing a tqdm bar on stderr (shown only once there is work to do)."""
    import sys

    from tqdm import tqdm

    bar: list = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=desc, unit="img", file=sys.stderr))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()
    return update
