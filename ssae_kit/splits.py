"""Held-out text and de-duplication for retrieval: `split_subdomain` splits a labelled corpus into
the general pool (what strategies select from), the subdomain's seeds, held-out subdomain documents
and out-of-domain documents (what SAEs are evaluated on, never trained on), leaving exact and near
duplicates (same title, overlapping words) out of the pool; `SubdomainSplit` saves and loads it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .corpora import Document
from .io import RunLayout, atomic_write_bytes, atomic_write_json, read_json, read_jsonl

__all__ = [
    "SubdomainSplit",
    "dedupe",
    "split_subdomain",
]


def dedupe_indices(docs: list[Document]) -> list[int]:
    """Indices of the first copy of each text (same up to case and whitespace)."""
    seen: set[str] = set()
    out = []
    for i, d in enumerate(docs):
        key = re.sub(r"\s+", " ", d.text.lower()).strip()
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


NEAR_DUPLICATE_JACCARD = 0.4
"""Two documents with the same `title_key` are near-duplicates when their word sets overlap at least
this much (Jaccard). BBC news re-files stories with a word changed or a paragraph added: its 29
same-title pairs overlap 0.49-1.0, while unrelated BBC stories overlap ~0.1-0.2, so a shared generic
first line ("Abstract") alone removes nothing."""


def title_key(doc: Document) -> str:
    """A document's first line (its title), case and spacing aside: equal keys flag near-duplicate candidates."""
    return re.sub(r"\s+", " ", doc.text.strip().split("\n", 1)[0].lower())


def dedupe(docs: list[Document]) -> list[Document]:
    """Drop exact duplicates (same text up to case and whitespace), keeping the first."""
    return [docs[i] for i in dedupe_indices(docs)]


@dataclass
class SubdomainSplit:
    """Disjoint parts of a labelled corpus: the pool to select from, seeds, and two held-out sets."""

    pool: list[Document]
    seeds: list[Document]
    heldout: list[Document]  # in-domain, never in the pool: for evaluating SSAEs
    ood: list[Document]  # out-of-domain, never in the pool
    near_duplicates: int = 0
    """Documents left out of the pool because their title (`title_key`) repeats an earlier pool
    document's, a seed's or a held-out one's: BBC re-files stories with a word changed."""

    def save(self, run_dir: str | Path) -> None:
        for name in ("pool", "seeds", "heldout", "ood"):
            rows = [json.dumps(asdict(d)) for d in getattr(self, name)]
            atomic_write_bytes(RunLayout(Path(run_dir)).split(name), ("\n".join(rows) + "\n").encode())
        atomic_write_json(RunLayout(Path(run_dir)).split_counts, {"near_duplicates": self.near_duplicates})

    @classmethod
    def load(cls, run_dir: str | Path) -> SubdomainSplit:
        parts = {}
        for name in ("pool", "seeds", "heldout", "ood"):
            path = RunLayout(Path(run_dir)).split(name)
            if not path.exists():
                raise FileNotFoundError(f"No {path}: run notebook 01 first (it writes the split).")
            parts[name] = [
                Document.from_row(row)
                for row in read_jsonl(path, "re-run notebook 01 (it writes the split).")
            ]
        counts = RunLayout(
            Path(run_dir)
        ).split_counts  # absent in runs from before near-duplicates were dropped
        return cls(
            **parts,
            **(read_json(counts, "re-run notebook 01 (it writes the split).") if counts.exists() else {}),
        )


def split_subdomain(
    docs: list[Document],
    label: str,
    n_seeds: int = 5,
    n_heldout: int = 50,
    n_ood: int = 50,
    seed: int = 0,
    heldout_docs: list[Document] | None = None,
) -> SubdomainSplit:
    """Deterministic split: seeds and held-out in-domain docs of `label`, held-out out-of-domain docs,
    the rest the pool (which keeps the remaining `label` docs for retrieval to find), less near-duplicates
    (`NEAR_DUPLICATE_JACCARD`) of each other, of the seeds and of the held-out documents.

    With `heldout_docs` (e.g. the committed held-out split of `corpora.heldout_split`, never
    trained on by the shipped GSAE), the held-out sets are its first `n_heldout` documents of
    `label` and first `n_ood` others, in its order; seeds and pool come from `docs`, which must not
    contain them. `seed` then only draws the seeds.
    """
    docs = dedupe(docs)
    rng = np.random.default_rng(seed)
    inside = [i for i, d in enumerate(docs) if d.label == label]
    outside = [i for i, d in enumerate(docs) if d.label != label]
    n_in_pool = n_seeds + (0 if heldout_docs is not None else n_heldout)
    if len(inside) < n_in_pool + 1:
        labels = sorted({str(d.label) for d in docs})
        raise ValueError(
            f"Only {len(inside)} documents have label {label!r} (labels: {labels}); need more than "
            f"{n_in_pool} (seeds{'' if heldout_docs is not None else ' + held-out'})."
        )
    inside, outside = list(rng.permutation(inside)), list(rng.permutation(outside))
    seeds = [docs[i] for i in inside[:n_seeds]]
    if heldout_docs is None:
        heldout = [docs[i] for i in inside[n_seeds : n_seeds + n_heldout]]
        ood = [docs[i] for i in outside[:n_ood]]
    else:
        heldout = [d for d in heldout_docs if d.label == label][:n_heldout]
        ood = [d for d in heldout_docs if d.label != label][:n_ood]
        if len(heldout) < n_heldout:
            raise ValueError(
                f"The held-out split has only {len(heldout)} documents of {label!r}: lower n_heldout."
            )
        overlap = {d.text for d in heldout + ood} & {d.text for d in docs}
        if overlap:
            raise ValueError(
                f"{len(overlap)} held-out documents are also in `docs`: pass the train part of the split."
            )
    taken = {d.doc_id for d in seeds + heldout + ood}
    seen: dict[str, list[set[str]]] = {}  # title -> word sets of the documents kept under it
    for d in seeds + heldout + ood:
        seen.setdefault(title_key(d), []).append(_words(d))
    pool = []
    for d in docs:
        if d.doc_id in taken:
            continue
        words, kept = _words(d), seen.setdefault(title_key(d), [])
        if not any(_overlapping(words, w) for w in kept):
            kept.append(words)
            pool.append(d)
    near_duplicates = len(docs) - len(pool) - len(taken & {d.doc_id for d in docs})
    return SubdomainSplit(pool, seeds, heldout, ood, near_duplicates)


def is_near_duplicate(a: Document, b: Document) -> bool:
    """Same `title_key` and word sets overlapping >= NEAR_DUPLICATE_JACCARD: the same story re-filed."""
    return title_key(a) == title_key(b) and _overlapping(_words(a), _words(b))


def _words(doc: Document) -> set[str]:
    return set(re.findall(r"\w+", doc.text.lower()))


def _overlapping(a: set[str], b: set[str]) -> bool:
    return len(a & b) >= NEAR_DUPLICATE_JACCARD * len(a | b)
