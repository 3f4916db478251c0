"""Feature dashboards and the feature browser: an SAE's latent activations on a sample of text
(`collect_feature_activations`, run through `hooks.iter_residuals` like every other reader) and what
is read off them (`top_contexts`, the latents a token fires); one latent's top contexts, activation
histogram and logit effects as a self-contained HTML string (so it renders in live notebooks and in
executed, static ones); and an ipywidgets browser over several SAEs' latents."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .corpora import Document, content_mask, tokenize_contexts
from .hooks import iter_residuals
from .models import d_model
from .sae import SAE

__all__ = ["collect_feature_activations", "dashboard_html", "feature_browser", "top_contexts"]


@dataclass
class FeatureActivations:
    """Latent activations of one SAE on a bounded sample of windows, for looking at features."""

    input_ids: torch.Tensor  # (N, T)
    keep: torch.Tensor  # (N, T) bool: content tokens
    acts: torch.Tensor  # (N, T, d_sae) float16, zero where keep is False


@torch.no_grad()
def collect_feature_activations(
    sae: SAE,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: list[Document],
    layer: int,
    ctx_len: int = 64,
    max_contexts: int = 64,
    batch_size: int = 8,
) -> FeatureActivations:
    """Run the model to `layer` on up to `max_contexts` windows of `docs` and encode with `sae`."""
    sae.check_reads(model_name=model.name_or_path, layer=layer, d_in=d_model(model))
    ctx = tokenize_contexts(docs, tokenizer, ctx_len, max_contexts=max_contexts)
    keep = content_mask(ctx, tokenizer)
    chunks = [
        (sae.encode(b.resid.to(sae.W_dec.dtype)) * b.keep[..., None]).half().cpu()
        for b in iter_residuals(model, ctx.input_ids, ctx.attention_mask, keep, layer, batch_size)
    ]
    return FeatureActivations(ctx.input_ids, keep, torch.cat(chunks))


def top_contexts(fa: FeatureActivations, latent: int, n: int = 8) -> list[tuple[int, int, float]]:
    """(context, position, activation) of the `n` largest activations of `latent`, one per context."""
    per_ctx = fa.acts[:, :, latent].float()  # (N, T)
    best, where = per_ctx.max(1)
    order = torch.argsort(best, descending=True)[:n]
    return [(int(c), int(where[c]), float(best[c])) for c in order if best[c] > 0]


def latents_for_token(fa: FeatureActivations, token_id: int, n: int = 5) -> list[int]:
    """Latents with the largest mean activation on occurrences of `token_id`."""
    where = (fa.input_ids == token_id) & fa.keep
    if not where.any():
        return []
    return fa.acts[where].float().mean(0).topk(n).indices.tolist()


def _token_html(tokenizer, token_id: int, act: float, peak: float) -> str:
    text = html.escape(tokenizer.decode([token_id])).replace("\n", "⏎")
    alpha = 0.0 if peak <= 0 else min(1.0, max(0.0, act / peak))
    return f'<span title="{act:.2f}" style="background: rgba(255,120,0,{alpha:.2f})">{text}</span>'


def dashboard_html(
    fa: FeatureActivations,
    sae,
    model,
    tokenizer,
    latent: int,
    title: str = "",
    n_contexts: int = 8,
    window: int = 12,
    n_logits: int = 8,
) -> str:
    """A self-contained HTML dashboard of one latent: stats, histogram, top contexts, logit effects."""
    acts = fa.acts[:, :, latent].float()[fa.keep]
    active = acts[acts > 0]
    rows = []
    for c, pos, value in top_contexts(fa, latent, n_contexts):
        lo, hi = max(0, pos - window), min(fa.input_ids.shape[1], pos + 4)
        toks = "".join(
            _token_html(tokenizer, int(fa.input_ids[c, t]), float(fa.acts[c, t, latent]), value)
            for t in range(lo, hi)
            if fa.keep[c, t]
        )
        rows.append(
            f"<tr><td style='text-align:right;padding-right:8px'>{value:.2f}</td><td>{toks}</td></tr>"
        )
    direction = sae.W_dec[latent].detach().float().to(model.get_output_embeddings().weight.device)
    effects = model.get_output_embeddings().weight.detach().float() @ direction  # (V,)
    promoted = [html.escape(tokenizer.decode([int(i)])) for i in effects.topk(n_logits).indices]
    suppressed = [html.escape(tokenizer.decode([int(i)])) for i in (-effects).topk(n_logits).indices]
    fig = Figure(figsize=(4, 2.2))
    ax = fig.subplots()
    ax.hist(active.numpy(), bins=30, color="tab:orange")
    ax.set_xlabel("activation (where > 0)")
    ax.set_ylabel("tokens")
    ax.set_title(f"latent {latent}: {len(active)} of {len(acts)} tokens active", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    img = base64.b64encode(buf.getvalue()).decode()
    return (
        f"<div class='feature-dashboard' style='font-family:sans-serif;border:1px solid #ccc;padding:8px;margin:4px'>"
        f"<h4 style='margin:0'>{html.escape(title)} latent {latent}</h4>"
        f"<p style='margin:2px 0'>density {len(active) / max(len(acts), 1):.4f} · max activation "
        f"{float(acts.max()) if len(acts) else 0:.2f}</p>"
        f"<img src='data:image/png;base64,{img}'/>"
        f"<p style='margin:2px 0'><b>promotes</b>: {' · '.join(promoted)}<br><b>suppresses</b>: {' · '.join(suppressed)}</p>"
        f"<table style='font-family:monospace;font-size:12px'>{''.join(rows) or '<tr><td>never active here</td></tr>'}</table></div>"
    )


def feature_browser(saes: dict, activations: dict, model, tokenizer, latent: int = 0):
    """An ipywidgets browser: pick an SAE, a latent or a token to search; shows its dashboard.

    Displaying it gives two outputs: the widget, live in JupyterLab, and a static snapshot of the
    dashboard it shows then (plain HTML). Static copies (nbconvert HTML, GitHub) cannot draw widgets
    and, given one output holding both, pick the widget and show nothing; a separate output they draw.
    """
    import ipywidgets as widgets

    class _Browser(widgets.VBox):
        def _ipython_display_(self, **kwargs):
            from IPython.display import HTML, display

            bundle = self._repr_mimebundle_(**kwargs)
            bundle["text/plain"] = (
                "feature browser (live where widgets are; the snapshot below shows its dashboard)"
            )
            display(bundle, raw=True)
            display(
                HTML(
                    f"<div class='feature-browser-snapshot'><p style='font-family:sans-serif;font-size:12px;"
                    f"color:#555;margin:6px 0 0 4px'>Snapshot of the browser for copies without live widgets: "
                    f"{html.escape(pick.value)}, latent {number.value}</p>{view.value}</div>"
                )
            )

    pick = widgets.Dropdown(options=list(saes), description="SAE")
    number = widgets.BoundedIntText(
        value=latent, min=0, max=next(iter(saes.values())).cfg.d_sae - 1, description="latent"
    )
    search = widgets.Text(placeholder="a token, e.g. ' software'", description="search")
    found = widgets.HTML()
    view = widgets.HTML()

    def show(*_):
        view.value = dashboard_html(
            activations[pick.value], saes[pick.value], model, tokenizer, number.value, pick.value
        )

    def on_search(*_):
        ids = tokenizer(search.value, add_special_tokens=False).input_ids
        hits = latents_for_token(activations[pick.value], ids[-1], 5) if ids else []
        found.value = (
            f"latents firing most on {html.escape(search.value)!r}: {hits}"
            if hits
            else "no occurrence in the sample"
        )
        if hits:
            number.value = hits[0]

    for w in (pick, number):
        w.observe(show, names="value")
    search.observe(on_search, names="value")
    show()
    return _Browser([widgets.HBox([pick, number, search]), found, view])
