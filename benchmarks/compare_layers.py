"""Which layer should the kit's GSAE read? Prints, per candidate layer of the embedded model:

- spliced-CE sensitivity: clean CE and CE with the layer zero-ablated (the gap an SAE must close);
- massive-norm tokens: share of content tokens above 10x their batch's median norm;
- caching cost: seconds per 1k tokens of forward_to_layer, and its ratio to layer 6;
- separation: 5-fold logistic-regression accuracy of mean-pooled residuals for the subdomain
  (BBC tech vs the rest) and for gender on synthetic bios with the profession cue removed.

Run: .venv/bin/python benchmarks/compare_layers.py  (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from ssae_kit import load_corpus, load_model
from ssae_kit.bios import synthetic_bios
from ssae_kit.corpora import Document, content_mask, tokenize_contexts
from ssae_kit.evals import ce_sums
from ssae_kit.hooks import forward_to_layer, replace_content, splice
from ssae_kit.models import massive_norm_mask

LAYERS = (3, 6, 9, 12, 15)


def pooled(model, tok, docs, layer, ctx_len=64, batch=16):
    out = []
    for s in range(0, len(docs), batch):
        ctx = tokenize_contexts(docs[s : s + batch], tok, ctx_len, max_contexts=None)
        first = {}
        for i, d in enumerate(ctx.doc_ids.tolist()):
            first.setdefault(d, i)
        rows = list(first.values())
        ids, mask = ctx.input_ids[rows], ctx.attention_mask[rows]
        keep = content_mask(ctx, tok)[rows]
        with torch.no_grad():
            r = forward_to_layer(model, ids, layer, mask)
        out.append(((r * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)).numpy())
    return np.concatenate(out)


def main() -> None:
    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m", device="cpu")
    bbc = load_corpus("bbc-news")
    rng = np.random.default_rng(0)
    sample = [bbc[i] for i in rng.choice(len(bbc), 200, replace=False)]
    ctx = tokenize_contexts(sample[:40], tok, 128, max_contexts=48)
    keep = content_mask(ctx, tok)
    bios = synthetic_bios(200, seed=0, profession_cue_rate=0.0)
    bio_docs = [Document(b.text) for b in bios]
    y_gender = np.array([b.gender == "female" for b in bios])
    y_tech = np.array([d.label == "tech" for d in sample])
    base_time = None
    print(
        f"{'layer':>5} {'CE clean':>9} {'CE zero':>8} {'gap':>6} {'massive %':>9} {'s/1k tok':>8} {'x L6':>5}"
        f" {'tech acc':>8} {'gender acc':>10}"
    )
    for layer in LAYERS:
        ce = {"clean": 0.0, "zero": 0.0}
        n_t, n_massive, n_keep, secs = 0, 0, 0, 0.0
        for s in range(0, len(ctx), 8):
            ids, mask, k = ctx.input_ids[s : s + 8], ctx.attention_mask[s : s + 8], keep[s : s + 8]
            with torch.no_grad():
                t0 = time.perf_counter()
                r = forward_to_layer(model, ids, layer, mask)
                secs += time.perf_counter() - t0
                n_massive += int(massive_norm_mask(r, k, 10.0).sum())
                n_keep += int(k.sum())
                ce["clean"] += float(ce_sums(model, ids, mask, k[:, 1:]).sum())
                with splice(model, layer, lambda x, k=k: replace_content(x, k, torch.zeros_like(x))):
                    ce["zero"] += float(ce_sums(model, ids, mask, k[:, 1:]).sum())
            n_t += int(k[:, 1:].sum())
        per_k = 1000 * secs / n_keep
        base_time = per_k if layer == 6 else base_time
        clf = LogisticRegression(max_iter=2000, C=0.1)
        tech = cross_val_score(clf, pooled(model, tok, sample, layer), y_tech, cv=5).mean()
        gender = cross_val_score(clf, pooled(model, tok, bio_docs, layer), y_gender, cv=5).mean()
        print(
            f"{layer:>5} {ce['clean'] / n_t:>9.3f} {ce['zero'] / n_t:>8.3f} {(ce['zero'] - ce['clean']) / n_t:>6.2f}"
            f" {100 * n_massive / n_keep:>9.3f} {per_k:>8.3f} {per_k / (base_time or per_k):>5.2f}"
            f" {tech:>8.3f} {gender:>10.3f}"
        )


if __name__ == "__main__":
    main()
