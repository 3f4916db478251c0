"""ssae_kit.corpora: every source loads into Documents; windows map back to their documents."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import torch

from ssae_kit import load_corpus
from ssae_kit.corpora import Document, content_mask, corpus_checksum, subsample_label, tokenize_contexts


def test_bbc_news_has_2225_articles_labelled_by_folder():
    docs = load_corpus("bbc-news")
    assert Counter(d.label for d in docs) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sport": 511,
        "tech": 401,
    }
    assert docs[0].doc_id == "bbc-news/business/001.txt"
    assert docs[0].text.startswith("Ad sales boost Time Warner profit")


def test_txt_file_is_one_document_per_blank_line_block(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first doc\nstill first\n\nsecond doc\n\n\n\nthird doc\n")
    docs = load_corpus(str(path))
    assert [d.text for d in docs] == ["first doc\nstill first", "second doc", "third doc"]
    assert docs[1].doc_id == "notes.txt#1" and docs[1].label is None


def test_txt_split_line_gives_one_document_per_line_and_blank_means_whitespace_only(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("alpha\nbeta\n   \ngamma\n")
    assert [d.text for d in load_corpus(str(path), split="line")] == ["alpha", "beta", "gamma"]
    assert [d.text for d in load_corpus(str(path))] == ["alpha\nbeta", "gamma"]


def test_txt_file_of_one_item_per_line_warns_to_pass_split_line(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("\n".join(f"item number {i}" for i in range(1000)))
    with pytest.warns(
        UserWarning,
        match=r"items.txt#0 is one document of 15,889 characters over 1000 lines.*"
        "split='line'",
    ):
        assert len(load_corpus(str(path))) == 1
    assert len(load_corpus(str(path), split="line")) == 1000


def test_unknown_split_names_both_choices_and_the_hf_syntax():
    with pytest.raises(
        ValueError, match=r"split='test' must be 'paragraph' or 'line'.*'hf:<dataset id>:<split>'"
    ):
        load_corpus("bbc-news", split="test")


@pytest.mark.parametrize(
    "line,match",
    [
        ('{"text": "b", ', r"c.jsonl, line 3, is not valid JSON.*fix or remove that line"),
        ('["b"]', r"c.jsonl, line 3, is not a JSON object"),
    ],
)
def test_malformed_jsonl_line_names_the_file_and_line(tmp_path, line, match):
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=match):
        load_corpus(str(tmp_path / "c.jsonl"))


@pytest.mark.parametrize(
    "suffix,row,problem",
    [
        (".jsonl", {"body": "x"}, "no 'text' field"),
        (".jsonl", {"text": None}, "'text' = null"),
        (".parquet", {"text": None}, "'text' = null"),
    ],
)
def test_missing_or_null_text_on_any_row_names_the_row(tmp_path, suffix, row, problem):
    rows = [{"text": "first"}, {"text": "second"}, row]
    path = tmp_path / f"c{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(
        ValueError, match=rf"Row 2 of c{suffix} \(c{suffix}#2, counting from 0\) has {problem}"
    ):
        load_corpus(str(path))


def test_labels_come_from_the_named_column_only(tmp_path):
    rows = [
        {"text": "a", "label": "x", "topic": "t"},
        {"text": "b", "label": None},
        {"text": "c", "topic": "u"},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    path = str(tmp_path / "c.jsonl")
    assert [d.label for d in load_corpus(path)] == ["x", None, None]  # null or missing: None, not "None"
    assert [d.label for d in load_corpus(path, label_field="topic")] == ["t", None, "u"]
    assert [d.label for d in load_corpus(path, label_field=None)] == [None, None, None]
    (tmp_path / "n.jsonl").write_text(json.dumps({"text": "a", "category": "x"}))
    assert load_corpus(str(tmp_path / "n.jsonl"))[0].label is None  # default "label" absent: no labels
    with pytest.raises(
        ValueError,
        match=r"no label column 'topic'; its columns are \['category', 'text'\].*"
        "label_field=None for no labels",
    ):
        load_corpus(str(tmp_path / "n.jsonl"), label_field="topic")


def test_jsonl_and_parquet_use_the_named_columns(tmp_path):
    rows = [
        {"body": "alpha text", "topic": "x"},
        {"body": "beta text", "topic": "y"},
        {"body": " ", "topic": "z"},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.parquet"):
        docs = load_corpus(str(tmp_path / name), text_field="body", label_field="topic")
        assert [(d.text, d.label) for d in docs] == [("alpha text", "x"), ("beta text", "y")]


def test_missing_text_column_names_the_columns_there(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "a"}))
    with pytest.raises(ValueError, match=r"no column 'text'.*\['body'\].*text_field="):
        load_corpus(str(tmp_path / "c.jsonl"))


def test_hf_prefix_loads_a_local_dataset_folder_offline(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i}", "label": i % 2}) for i in range(5))
    )
    docs = load_corpus(f"hf:{folder}:train")
    assert [d.text for d in docs] == [f"doc {i}" for i in range(5)]
    assert docs[1].label == "1"


def test_hf_dataset_not_cached_offline_gives_a_clear_error():
    with pytest.raises(ValueError, match="Offline"):
        load_corpus("hf:no-such-org/no-such-dataset-xyz")


def test_path_that_does_not_exist_names_the_accepted_sources():
    with pytest.raises(FileNotFoundError, match="bbc-news.*hf:<dataset id>"):
        load_corpus("no/such/file.jsonl")


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no documents"):
        load_corpus(str(tmp_path / "empty.txt"))


def test_windows_have_fixed_length_bos_first_and_map_back_to_documents(tiny, docs):
    _, tok = tiny
    ctx = tokenize_contexts(docs, tok, ctx_len=16)
    assert ctx.input_ids.shape[1] == 16 and (ctx.input_ids[:, 0] == tok.bos_token_id).all()
    for i, doc in enumerate(docs):
        rows = (ctx.doc_ids == i).nonzero().flatten()
        text_ids = torch.cat([ctx.input_ids[r, 1:][ctx.attention_mask[r, 1:].bool()] for r in rows])
        assert text_ids.tolist() == tok(doc.text, add_special_tokens=False).input_ids
        assert ctx.starts[rows].tolist() == list(range(0, 15 * len(rows), 15))


def test_content_mask_drops_bos_and_padding(tiny):
    _, tok = tiny
    ctx = tokenize_contexts([Document("abcdef")], tok, ctx_len=10)
    assert content_mask(ctx, tok).tolist() == [[False] + [True] * 6 + [False] * 3]


def test_max_contexts_and_bad_ctx_len(tiny, docs):
    _, tok = tiny
    assert len(tokenize_contexts(docs, tok, ctx_len=8, max_contexts=5)) == 5
    with pytest.raises(ValueError, match="ctx_len >= 2"):
        tokenize_contexts(docs, tok, ctx_len=1)


def test_corpus_checksum_depends_on_text_and_order():
    a, b = Document("one"), Document("two")
    assert corpus_checksum([a, b]) == corpus_checksum([Document("one", "x"), b])
    assert corpus_checksum([a, b]) != corpus_checksum([b, a])


def _labelled(n_per_label: int = 30) -> list[Document]:
    """Documents of labels x (the subdomain) and y, of varied lengths (word counts 3..12)."""
    return [
        Document(" ".join(["w"] * (3 + (7 * i) % 10)), label, f"{label}{i}")
        for label in ("y", "x")
        for i in range(n_per_label)
    ]


@pytest.mark.parametrize("share", [0.0, 0.01, 0.05, 0.1, 0.3])
def test_subsample_label_reaches_the_share_within_one_document_and_keeps_the_rest(share):
    docs = _labelled()
    count = lambda text: len(text.split())
    kept, report = subsample_label(docs, "x", share, count, seed=3)
    n_y = sum(count(d.text) for d in docs if d.label == "y")
    n_x = sum(count(d.text) for d in kept if d.label == "x")
    target = share * n_y / (1 - share)
    longest = max(count(d.text) for d in docs if d.label == "x")
    assert abs(n_x - target) <= longest  # within one document of the target
    assert report.reached == pytest.approx(n_x / (n_x + n_y))
    assert report.tokens_per_label == {"x": n_x, "y": n_y} if n_x else {"y": n_y}
    assert [d for d in kept if d.label == "y"] == [d for d in docs if d.label == "y"]  # the rest untouched
    assert kept == [d for d in docs if d in kept]  # order kept
    assert report.n_docs_kept == sum(d.label == "x" for d in kept) and report.n_docs_total == 30


def test_subsample_label_is_seeded_and_deterministic():
    docs, count = _labelled(), lambda text: len(text.split())
    a, b, c = (subsample_label(docs, "x", 0.1, count, seed=s)[0] for s in (0, 0, 1))
    assert a == b and a != c


def test_subsample_label_keeps_everything_at_or_above_the_natural_share_and_refuses_bad_input():
    docs, count = _labelled(), lambda text: len(text.split())
    for share in (None, 0.5, 0.9):
        kept, report = subsample_label(docs, "x", share, count)
        assert kept == docs and report.reached == pytest.approx(report.natural)
    with pytest.raises(ValueError, match=r"share=1.0 must lie in \[0, 1\)"):
        subsample_label(docs, "x", 1.0, count)
    with pytest.raises(ValueError, match=r"No document has label 'tech' \(labels: \['x', 'y'\]\)"):
        subsample_label(docs, "tech", 0.1, count)
