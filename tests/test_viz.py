"""Figures show once, inline, as PNGs (with and without pyplot), and leave nothing behind; the
feature browser displays as a widget plus a separate static snapshot of its dashboard."""

from __future__ import annotations

import gc
import weakref

import nbformat
from nbclient import NotebookClient

from ssae_kit import SAE
from ssae_kit.dashboards import collect_feature_activations, feature_browser
from ssae_kit.sae import SAEConfig
from ssae_kit.viz import plot_curves, plot_embedding_map, plot_rarity_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _curves():
    return plot_curves({"a": ([1, 2, 3], [3, 1, 2])}, "x (units)", "y (units)", "a line")


def test_ipython_formats_a_kit_figure_as_png_without_pyplot():
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(_curves())
    assert data["image/png"].startswith(PNG_SIGNATURE), (
        "no PNG: a cell ending in `fig` would print <Figure size ...>"
    )


def test_figures_are_freed_once_unreferenced_and_never_enter_pyplot():
    fig = _curves()
    ref = weakref.ref(fig)
    import matplotlib.pyplot as plt  # only to ask its registry; the kit itself never imports pyplot

    assert plt.get_fignums() == [], "a viz figure went into pyplot's registry"
    del fig
    gc.collect()
    assert ref() is None, "something in the kit still holds the figure (memory would grow per figure)"


def test_a_kernel_shows_each_returned_figure_once_with_and_without_pyplot(tmp_path):
    """A live kernel's displayhook: a cell ending in `fig` gives one image/png; after `import
    matplotlib.pyplot` (inline backend active, its Figure formatter registered) still exactly one."""
    make = "from ssae_kit.viz import plot_curves\nfig = plot_curves({'a': ([1, 2], [3, 4])}, 'x', 'y', 't')\n"
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(make + "fig"),
            nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\n" + make + "fig"),
            nbformat.v4.new_code_cell("plt.plot([1, 2]);"),  # the user's own pyplot figure, for comparison
        ]
    )
    NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    pngs = [sum("image/png" in o.get("data", {}) for o in cell.outputs) for cell in nb.cells]
    assert pngs == [1, 1, 1], f"image/png outputs per cell {pngs}: expected one per figure"


def test_feature_browser_displays_a_widget_and_a_separate_static_dashboard(tiny, docs, monkeypatch):
    import IPython.display

    model, tokenizer = tiny
    sae = SAE(SAEConfig(d_in=32, d_sae=16, layer=1))
    fa = collect_feature_activations(sae, model, tokenizer, docs, layer=1, ctx_len=16, max_contexts=4)
    browser = feature_browser({"GSAE": sae}, {"GSAE": fa}, model, tokenizer, latent=3)
    shown = []
    monkeypatch.setattr(
        IPython.display, "display", lambda obj, raw=False: shown.append(obj if raw else obj.data)
    )
    browser._ipython_display_()
    widget, snapshot = shown
    assert "application/vnd.jupyter.widget-view+json" in widget and "text/html" not in widget, widget.keys()
    assert (
        "feature-browser-snapshot" in snapshot and "feature-dashboard" in snapshot and "latent 3" in snapshot
    )
    assert "data:image/png;base64," in snapshot, "the snapshot lost its activation histogram"
    controls, _, view = browser.children
    controls.children[1].value = 5  # what typing a latent number in a live kernel does
    assert "latent 5" in view.value and "latent 3" not in view.value, "the widget's dashboard did not follow"


# --- figures drawn from plain data ---------------------------------------------------------------

from ssae_kit.viz import plot_tree_values


def test_a_tree_figure_takes_the_tree_as_leaf_paths():
    paths = {"a": ["r", "x", "a"], "b": ["r", "x", "b"], "c": ["r", "c"]}  # ((a, b), c)
    fig = plot_tree_values(
        paths, ["a", "b", "c"], {"m1": [0.1, 0.5, 0.9], "m2": [1, 1, 0]}, "t", [True, False, False]
    )
    rows = [ax for ax in fig.axes if ax.get_ylabel() in ("m1", "m2")]
    assert len(rows) == 2, "one dendrogram per row of values"
    # a bar at each inner node (above r, at r, at x) and a stem to each child (r, x, c, a, b): 3 + 5 lines
    assert len(rows[0].lines) == 8, "the dendrogram does not follow the leaf paths"


# --- the maps' arithmetic: PCA and decoder matching ----------------------------------------------

import numpy as np
import torch

from ssae_kit.features import principal_components, project_2d
from ssae_kit.latents import match_latents


def test_an_embedding_map_rings_each_selection_in_its_own_layer():
    points, labels = np.arange(12.0).reshape(6, 2), ["a", "b"] * 3
    masks = {"dense": np.array([1, 1, 0, 0, 0, 0], bool), "dense_tracin": np.array([0, 1, 1, 0, 0, 0], bool)}
    ax = plot_embedding_map(points, labels, masks).axes[0]
    rings = {c.get_label(): c.get_offsets() for c in ax.collections if c.get_label().startswith("selected")}
    assert list(rings) == ["selected: dense", "selected: dense_tracin"], "one labelled layer per selection"
    assert np.array_equal(rings["selected: dense_tracin"], points[[1, 2]])
    assert not any(
        c.get_label().startswith("selected") for c in plot_embedding_map(points, labels).axes[0].collections
    )


def test_project_2d_matches_the_svd_of_the_centred_rows_up_to_each_axis_sign():
    x = np.random.default_rng(0).standard_normal((50, 6)) @ np.diag([5.0, 3, 1, 0.5, 0.2, 0.1])
    centred = x - x.mean(0)
    reference = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    got = project_2d(x)
    signs = np.sign((got * reference).sum(0))
    np.testing.assert_allclose(got, reference * signs, atol=1e-10)


def test_principal_components_fit_on_some_rows_and_project_all():
    x = np.random.default_rng(1).standard_normal((40, 5))
    fit = np.arange(40) < 20
    z = principal_components(x, 3, fit)
    assert z.shape == (40, 3)
    np.testing.assert_allclose(z[fit].mean(0), 0, atol=1e-12)  # centred on the fitted rows only
    assert abs(z[~fit].mean(0)).max() > 1e-3
    assert principal_components(x[:4], 8).shape == (4, 4), "k is capped at what 4 rows can give"


def test_match_latents_finds_each_latents_closest_direction():
    a = SAE(SAEConfig(d_in=2, d_sae=2))
    b = SAE(SAEConfig(d_in=2, d_sae=3))
    with torch.no_grad():
        a.W_dec.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        b.W_dec.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0], [3.0, 0.0]]))
    np.testing.assert_allclose(match_latents(a, b), [1.0, 0.5**0.5], rtol=1e-6)


def test_the_rarity_sweep_figure_puts_shares_in_order_with_each_comparison_and_its_interval():
    def row(share, reached, base):
        r = {"share": share, "reached": reached}
        for name in ("dense_vs_gsae", "none_vs_gsae", "dense_vs_none"):
            for tag in ("in", "ood"):
                r |= {
                    f"{name}_{tag}": base,
                    f"{name}_{tag}_low": base - 0.1,
                    f"{name}_{tag}_high": base + 0.1,
                }
        return r

    fig = plot_rarity_sweep([row("natural", 0.206, -0.1), row("0", 0.0, -0.3), row("1", 0.0099, -0.2)])
    left, right = fig.axes
    assert [t.get_text() for t in left.get_xticklabels()] == ["0.0%", "1.0%", "20.6%"]  # sorted by share
    assert [t.get_text() for t in left.get_legend().get_texts()] == [
        "dense − GSAE",
        "none − GSAE",
        "dense − none",
    ]
    dense = left.lines[0].get_ydata()
    assert list(dense) == [-0.3, -0.2, -0.1] and right.get_title() == "held-out text outside it"
