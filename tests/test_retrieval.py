"""ssae_kit.retrieval: strategies fill the same budget, dense retrieval finds the subdomain,
indices check their encoder, and selections and splits survive a save/load."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ssae_kit.corpora import Document, corpus_checksum
from ssae_kit.embeddings import Embedder, build_index, index_recall, load_index, save_index
from ssae_kit.io import RunLayout, cache_dir, npy_bytes
from ssae_kit.retrieval import STRATEGIES, Selection, precision_difference, select, selection_report
from ssae_kit.splits import SubdomainSplit, dedupe, split_subdomain

SPORT = [
    "The striker scored twice as the home team won the football match.",
    "The goalkeeper saved a penalty in the final minute of the cup tie.",
    "The tennis champion won the final set after a long rally.",
    "The coach praised the midfield after the league victory on Saturday.",
    "Fans cheered as the runner broke the world record at the athletics meeting.",
]
FOOD = [
    "Simmer the onions in butter until soft, then add the garlic.",
    "Bake the bread for forty minutes until the crust is golden.",
    "Whisk the eggs with sugar and fold in the flour gently.",
    "Season the soup with salt and pepper and serve it hot.",
    "Roast the vegetables with olive oil and fresh rosemary.",
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture(scope="module")
def pool():
    docs = [Document(t, "sport", f"s{i}") for i, t in enumerate(SPORT[1:])]
    docs += [Document(t, "food", f"f{i}") for i, t in enumerate(FOOD)]
    return docs + [Document(SPORT[1].upper(), "sport", "dup")]  # a duplicate up to case


@pytest.fixture(scope="module")
def seeds():
    return [Document(SPORT[0], "sport", "seed")]


def test_dense_retrieval_ranks_the_subdomain_first(pool, seeds, embedder, tiny):
    sel = select(pool, seeds, "dense", 10**6, tiny[1], embedder=embedder)
    assert [d.label for d in sel.documents[:4]] == ["sport"] * 4 and len(
        sel.documents
    ) == 9  # duplicate dropped
    assert sel.scores == sorted(sel.scores, reverse=True)


def test_precomputed_pool_embeddings_give_the_same_selection(pool, seeds, embedder, tiny):
    emb = embedder.embed([d.text for d in pool], progress=False)
    a = select(pool, seeds, "dense", 200, tiny[1], embedder=embedder)
    b = select(pool, seeds, "dense", 200, tiny[1], embedder=embedder, pool_embeddings=emb)
    assert a.documents == b.documents
    with pytest.raises(ValueError, match="pool_embeddings holds 3 vectors for a pool of 10 documents"):
        select(pool, seeds, "dense", 200, tiny[1], embedder=embedder, pool_embeddings=emb[:3])


@pytest.mark.parametrize("combine", ["mean", "max"])
def test_selecting_through_a_faiss_index_matches_the_full_ranking(pool, seeds, embedder, tiny, combine):
    seeds2 = seeds + [Document(SPORT[2], "sport", "seed2")]
    index = build_index(embedder.embed_corpus(pool))
    full = select(pool, seeds2, "dense", 200, tiny[1], embedder=embedder, combine=combine)
    via = select(pool, seeds2, "dense", 200, tiny[1], embedder=embedder, combine=combine, index=index)
    assert via.documents == full.documents
    np.testing.assert_allclose(via.scores, full.scores, rtol=1e-5)
    with pytest.raises(ValueError, match="index holds 10 vectors for a pool of 9"):
        select(pool[:-1], seeds, "dense", 200, tiny[1], embedder=embedder, index=index)


def test_bm25_ranks_by_shared_words(tiny):
    pool = [
        Document("apples and pears", "fruit"),
        Document("cars and trucks", "cars"),
        Document("pears are sweet", "fruit"),
    ]
    sel = select(pool, [Document("ripe pears")], "bm25", 10**6, tiny[1])
    assert {d.text for d in sel.documents[:2]} == {"apples and pears", "pears are sweet"}


@pytest.mark.parametrize("strategy", ["dense", "bm25", "random"])
def test_every_strategy_fills_the_same_budget_without_exceeding_it(pool, seeds, embedder, tiny, strategy):
    tok = tiny[1]
    sel = select(pool, seeds, strategy, 150, tok, embedder=embedder)
    lengths = {d.text: len(tok(d.text, add_special_tokens=False).input_ids) for d in pool}
    assert sel.tokens_used == sum(lengths[d.text] for d in sel.documents) <= 150
    assert min(lengths.values()) > 150 - sel.tokens_used  # nothing else would have fitted


def test_none_takes_the_deduplicated_pool_and_seed_only_the_seeds(pool, seeds, tiny):
    everything = select(pool, seeds, "none", None, tiny[1]).documents
    assert (
        sorted(d.doc_id for d in everything) == sorted(d.doc_id for d in dedupe(pool))
        and len(everything) == 9
    )
    assert everything != dedupe(pool)  # shuffled: a later token cap must not take the first topic only
    assert select(pool, seeds, "seed_only", None, tiny[1]).documents == seeds


def test_random_selection_is_seeded(pool, seeds, tiny):
    a, b, c = (select(pool, seeds, "random", 300, tiny[1], seed=s).documents for s in (0, 0, 1))
    assert a == b and a != c


def test_selection_report_gives_token_precision_with_an_interval_then_document_precision_and_recall(
    pool, seeds, tiny
):
    sel = Selection("dense", [pool[0], pool[1], pool[4]], [3.0, 2.0, 1.0], 0, 100)  # sport, sport, food
    rep = selection_report(sel, "sport", pool, tiny[1])
    assert next(iter(rep)) == "token_precision"
    assert rep["doc_precision"] == pytest.approx(2 / 3) and rep["recall"] == pytest.approx(2 / 4)
    n = [len(tiny[1](d.text, add_special_tokens=False).input_ids) for d in sel.documents]
    assert rep["token_precision"] == pytest.approx((n[0] + n[1]) / sum(n))
    assert np.isnan(rep["token_precision_low"]) and np.isnan(rep["token_precision_high"])  # 3 documents: none
    sel = Selection("dense", (pool[:2] + pool[4:5]) * 4, [1.0] * 12, 0, 100)  # 12 documents: an interval
    rep = selection_report(sel, "sport", pool, tiny[1])
    assert 0 <= rep["token_precision_low"] < rep["token_precision"] < rep["token_precision_high"] <= 1


def test_token_precision_differs_from_document_precision_when_lengths_differ(tiny):
    # One long subdomain document and nine short others: half the documents' story is wrong.
    docs = [Document("word " * 400, "in", "long")] + [
        Document("short text", "out", f"s{i}") for i in range(9)
    ]
    rep = selection_report(Selection("random", docs, [0.0] * 10, 0, None), "in", docs, tiny[1])
    assert rep["doc_precision"] == pytest.approx(0.1) and rep["token_precision"] > 0.9


def test_precision_difference_interval_excludes_zero_only_for_a_real_gap(tiny):
    good = [Document(f"sport text number {i}", "sport", f"g{i}") for i in range(30)]
    bad = [Document(f"food text number {i}", "food", f"b{i}") for i in range(30)]
    pure, mixed = (
        Selection("dense", good, [0.0] * 30, 0, None),
        Selection("random", good[:15] + bad[:15], [0.0] * 30, 0, None),
    )
    d = precision_difference(pure, mixed, "sport", tiny[1])
    assert d.estimate == pytest.approx(0.5, abs=0.02) and d.low > 0
    assert d.verdict("dense", "random").startswith("dense has higher token precision than random (better)")
    d = precision_difference(mixed, mixed, "sport", tiny[1])
    assert d.estimate == 0 and d.low < 0 < d.high
    few = precision_difference(Selection("dense", good[:4], [0.0] * 4, 0, None), mixed, "sport", tiny[1])
    assert np.isnan(few.low) and "too few documents for an interval (4 < 10)" in few.verdict(
        "dense", "random"
    )


def test_token_precision_gets_no_interval_from_fewer_than_ten_documents(tiny):
    docs = [Document(f"sport {i}", "sport" if i % 2 else "food", f"d{i}") for i in range(4)]
    rep = selection_report(Selection("dense", docs, [0.0] * 4, 0, None), "sport", docs, tiny[1])
    assert (
        0 < rep["token_precision"] < 1
        and np.isnan(rep["token_precision_low"])
        and np.isnan(rep["token_precision_high"])
    )


def test_none_and_random_controls_are_different_experiments(pool, seeds, tiny):
    none = select(pool, seeds, "none", None, tiny[1], seed=0).documents
    for budget in (60, 120, 300):
        rnd = select(pool, seeds, "random", budget, tiny[1], seed=0).documents
        assert rnd != none[: len(rnd)]  # its own seed stream: not a prefix of none's order


def test_selection_and_split_round_trip_through_jsonl(pool, seeds, tiny, tmp_path):
    sel = select(pool, seeds, "bm25", 200, tiny[1])
    assert Selection.load(sel.save(RunLayout(tmp_path).selection("bm25"))) == sel
    docs = [Document(f"text {i}", "a" if i % 3 else "b", f"d{i}") for i in range(60)]
    split = split_subdomain(docs, "b", n_seeds=2, n_heldout=5, n_ood=7, seed=3)
    split.save(tmp_path)
    again = SubdomainSplit.load(tmp_path)
    assert again == split == split_subdomain(docs, "b", n_seeds=2, n_heldout=5, n_ood=7, seed=3)
    parts = [{d.doc_id for d in getattr(split, k)} for k in ("pool", "seeds", "heldout", "ood")]
    assert sum(map(len, parts)) == 60 and len(set().union(*parts)) == 60  # disjoint, complete
    assert all(d.label == "b" for d in split.seeds + split.heldout) and all(d.label == "a" for d in split.ood)
    pool_file = RunLayout(tmp_path).split("pool")  # a run saved before ids were called doc_id still loads
    pool_file.write_text(pool_file.read_text().replace('"doc_id"', '"source"'))
    assert '"source"' in pool_file.read_text() and SubdomainSplit.load(tmp_path).pool == split.pool


def test_a_committed_heldout_split_supplies_the_test_text_and_seeds_come_from_the_rest():
    docs = [Document(f"text {i}", "a" if i % 3 else "b", f"d{i}") for i in range(60)]
    heldout, rest = docs[:20], docs[20:]
    split = split_subdomain(rest, "b", n_seeds=2, n_heldout=4, n_ood=5, seed=1, heldout_docs=heldout)
    assert (
        split.heldout == [d for d in heldout if d.label == "b"][:4]
        and split.ood == [d for d in heldout if d.label == "a"][:5]
    )
    assert {d.doc_id for d in split.seeds + split.pool} <= {d.doc_id for d in rest} and len(split.pool) == 38
    assert split_subdomain(rest, "b", 2, 4, 5, seed=2, heldout_docs=heldout).heldout == split.heldout
    with pytest.raises(ValueError, match="also in `docs`"):
        split_subdomain(docs, "b", 2, 4, 5, heldout_docs=heldout)
    with pytest.raises(ValueError, match="only 7 documents of 'b'.*lower n_heldout"):
        split_subdomain(rest, "b", 2, 10, 5, heldout_docs=heldout)


def test_embeddings_are_unit_norm_and_cached(pool, embedder):
    first = embedder.embed_corpus(pool)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder.embed_corpus(pool), first)


def test_exact_and_ivf_indices_find_the_true_neighbours(tmp_path, embedder, pool):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    x = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat, ivf = build_index(x), build_index(x, ivf_threshold=1000)
    assert type(flat).__name__ == "IndexFlatIP" and type(ivf).__name__ == "IndexIVFFlat"
    assert index_recall(ivf, x) >= 0.95 and index_recall(flat, x) == 1.0
    _, truth = flat.search(x[:50], 10)
    brute = np.argsort(-(x[:50] @ x.T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) for a, b in zip(truth, brute)]) == 10
    emb = embedder.embed_corpus(pool)
    path = save_index(build_index(emb), tmp_path / "pool.faiss", embedder, pool)
    assert load_index(path, embedder, pool).ntotal == len(pool)


def test_index_from_another_encoder_or_pool_is_refused(tmp_path, embedder, pool):
    path = save_index(build_index(embedder.embed_corpus(pool)), tmp_path / "pool.faiss", embedder, pool)
    other = Embedder.__new__(Embedder)
    other.name, other.dim = "another-encoder", 768
    with pytest.raises(ValueError, match="built with encoder 'all-MiniLM-L6-v2'.*rebuild"):
        load_index(path, other, pool)
    with pytest.raises(ValueError, match="another pool"):
        load_index(path, embedder, pool[:-1])


def test_bad_selection_requests_name_the_fix(pool, seeds, tiny, tmp_path):
    with pytest.raises(ValueError, match="seed set is empty"):
        select(pool, [], "dense", 100, tiny[1])
    with pytest.raises(ValueError, match=r"Seed\(s\) \[1\] have no text: .*embedding of an empty string"):
        select(pool, [seeds[0], Document("  \n", "tech", "blank")], "dense", 100, tiny[1])
    with pytest.raises(TypeError, match="wrap texts as"):
        select(pool, ["a seed as a string"], "dense", 100, tiny[1])
    with pytest.raises(ValueError, match="smaller than every candidate.*raise the budget"):
        select(pool, seeds, "bm25", 3, tiny[1])
    with pytest.raises(
        ValueError,
        match=f"Unknown strategy 'tfidf'; use one of {STRATEGIES}".replace("(", r"\(").replace(")", r"\)"),
    ):
        select(pool, seeds, "tfidf", 100, tiny[1])
    with pytest.raises(
        ValueError, match=r"needs the LM and a GSAE: call ssae_kit.tracin.select_tracin\(pool, seeds, 'bm25'"
    ):
        select(pool, seeds, "bm25_tracin", 100, tiny[1])
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        Selection.load(RunLayout(tmp_path).selection("dense"))
    with pytest.raises(ValueError, match="Only 0 documents have label 'tech'"):
        split_subdomain(pool, "tech")


def test_unknown_encoder_offline_is_a_clear_error():
    with pytest.raises(ValueError, match="neither embedded.*local Hugging Face cache"):
        Embedder("no-such-org/no-such-encoder")


@pytest.mark.parametrize("strategy", ["none", "random", "bm25", "dense"])
def test_empty_pool_is_refused_with_the_kits_message(seeds, tiny, strategy):
    with pytest.raises(ValueError, match="The pool is empty: there is nothing to select from"):
        select([], seeds, strategy, 100, tiny[1])


def test_bm25_with_stop_word_only_seeds_or_pool_says_why(pool, seeds, tiny):
    with pytest.raises(
        ValueError, match=r"BM25 cannot use the seeds \['empty'\]: no word is left.*strategy='dense'"
    ):
        select(pool, seeds + [Document("the and of it", "sport", "empty")], "bm25", 100, tiny[1])
    with pytest.raises(ValueError, match="BM25 cannot score the pool: no document has a word left"):
        select([Document("the of"), Document("and it is")], seeds, "bm25", 100, tiny[1])


def test_index_or_embeddings_of_another_encoder_dimension_are_refused(pool, seeds, embedder, tiny):
    other = np.random.default_rng(0).normal(size=(len(pool), 16)).astype(np.float32)
    match = (
        "holds 16-dimensional vectors but encoder 'all-MiniLM-L6-v2' gives 384: build it from this encoder"
    )
    with pytest.raises(ValueError, match=f"The index {match}"):
        select(pool, seeds, "dense", 200, tiny[1], embedder=embedder, index=build_index(other))
    with pytest.raises(ValueError, match=f"pool_embeddings {match}"):
        select(pool, seeds, "dense", 200, tiny[1], embedder=embedder, pool_embeddings=other)


def test_budget_holding_the_whole_pool_warns_that_random_equals_none(pool, seeds, tiny):
    with pytest.warns(
        UserWarning,
        match=r"budget_tokens=1000000 holds the whole pool.*'random' \(and every "
        r"strategy\) equals 'none'",
    ):
        sel = select(pool, seeds, "random", 10**6, tiny[1])
    assert len(sel.documents) == len(dedupe(pool))


@pytest.mark.parametrize("damage", ["nan", "truncated"])
def test_a_nan_or_truncated_embedding_cache_is_recomputed_not_used(embedder, docs, damage):
    first = embedder.embed_corpus(docs[:5], progress=False)
    key = hashlib.sha256(f"{embedder.name}|{corpus_checksum(docs[:5])}|5".encode()).hexdigest()[:20]
    path = cache_dir("embeddings") / f"{key}.npy"
    if damage == "nan":
        path.write_bytes(npy_bytes(np.full_like(first, np.nan)))
    else:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="Re-embedding"):
        again = embedder.embed_corpus(docs[:5], progress=False)
    np.testing.assert_allclose(again, first, atol=1e-6)


def test_the_pool_leaves_out_near_duplicates_of_its_documents_and_of_held_out_ones(tmp_path):
    story = "Mobiles are slow to catch on in Europe says a report from analysts today"
    docs = [
        Document(f"Mobile multimedia slow\n\n{story}.", "sport", "a"),
        Document(f"Mobile  multimedia SLOW\n\n{story} and in Asia.", "sport", "b"),  # words added: dropped
        Document("Mobile multimedia slow\n\nA different story under the same headline.", "sport", "c"),
        Document(f"Held-out twin\n\n{story}, held out.", "sport", "d"),  # near-duplicate of a held-out doc
        *[
            Document(f"Story {i}\n\nText number {i}.", "tech" if i % 2 else "sport", f"s{i}")
            for i in range(12)
        ],
    ]
    heldout = [Document(f"Held-out twin\n\n{story}, held out here.", "sport", "h"), docs[10], docs[11]]
    rest = [d for d in docs if d.doc_id not in {"s6", "s7"}]
    split = split_subdomain(rest, "tech", n_seeds=2, n_heldout=1, n_ood=1, seed=0, heldout_docs=heldout)
    sources = {d.doc_id for d in split.pool}
    assert "b" not in sources and "d" not in sources and {"a", "c"} <= sources
    assert split.near_duplicates == 2
    assert len(dedupe(rest)) == len(rest)  # exact de-duplication keeps them all
    split.save(tmp_path)
    assert SubdomainSplit.load(tmp_path).near_duplicates == 2
