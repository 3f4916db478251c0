"""ssae_kit.tsda: the DT generator, the taxonomist loss, source-only / DANN / TSDA / oracle training,
model selection on source labels only, and the seeds run over processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssae_kit.taxonomy import flat_matrix
from ssae_kit.tsda import (
    DAConfig,
    DomainData,
    accuracy_by_domain,
    compare_over_seeds,
    make_dt,
    select_on_source,
    taxonomist_loss,
    train_da,
)


def test_dt14_shapes_sources_and_a_symmetric_matrix():
    d = make_dt(14, seed=0)
    assert d.x.shape == (14 * 2 * 50, 2) and set(d.y.tolist()) == {0, 1} and d.is_source.sum() == 3
    assert d.A.shape == (14, 14) and np.allclose(d.A, d.A.T) and np.all(np.diag(d.A) == 0) and d.A.max() == 1
    assert d.A[0, 1] < d.A[0, 13]  # neighbours in theta share a subtree
    assert make_dt(40, theta_max=2.5 * np.pi).theta.max() > 2 * np.pi  # DT-40 goes beyond a full turn


def test_labels_mirror_between_theta_zero_and_pi():
    d = make_dt(14, n_per_class=400, seed=1)
    mean = lambda leaf, label: d.x[(d.domain == leaf) & (d.y == label)].mean(0)
    np.testing.assert_allclose(mean(0, 0), [1, 0], atol=0.1)  # r = 1 at theta = 0
    np.testing.assert_allclose(mean(13, 0), [-4, 0], atol=0.1)  # r = 4 at theta = pi: where class 1 was
    np.testing.assert_allclose(mean(13, 1), [4, 0], atol=0.1)


def test_same_seed_same_data():
    a, b, c = make_dt(seed=3), make_dt(seed=3), make_dt(seed=4)
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)


def test_make_dt_needs_a_source_and_a_target():
    with pytest.raises(ValueError, match="at least one source"):
        make_dt(14, n_sources=0)


def test_taxonomist_loss_on_a_hand_computed_case():
    A = torch.tensor([[0, 0.5, 1], [0.5, 0, 1], [1, 1, 0]])
    points = torch.tensor([[0.0, 0], [1, 0], [0, 2]])
    # d01 = 1 vs 0.5 -> ((1 - .5) / .5)^2 = 1; d02 = 2 vs 1 -> 1; d12 = sqrt(5) vs 1 -> (sqrt(5) - 1)^2
    expected = (1 + 1 + (5**0.5 - 1) ** 2) / 3
    assert float(taxonomist_loss(points, torch.tensor([0, 1, 2]), A)) == pytest.approx(expected, rel=1e-6)
    # a second domain-0 point at p0: its pair with p0 is skipped (same domain), its other pairs count
    more = torch.cat([points, points[:1]])
    expected = (1 + 1 + (5**0.5 - 1) ** 2 + 1 + 1) / 5
    assert float(taxonomist_loss(more, torch.tensor([0, 1, 2, 0]), A)) == pytest.approx(expected, rel=1e-6)
    # gradients stay finite although a point sits on top of another
    more.requires_grad_(True)
    taxonomist_loss(more, torch.tensor([0, 1, 2, 0]), A).backward()
    assert torch.isfinite(more.grad).all()


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for net in (model.E, model.F, model.D) for p in net.parameters()]


def test_tsda_without_taxonomist_or_taxonomy_input_takes_exactly_dann_steps():
    data = make_dt(seed=0)
    dann = train_da(data, DAConfig("dann", seed=2, steps=60))
    bare = train_da(data, DAConfig("tsda", lambda_t=0.0, taxonomy_input=False, seed=2, steps=60))
    assert bare.T is not None  # the taxonomist is there and trained; it just has no weight in E's loss
    assert all(torch.equal(a, b) for a, b in zip(_weights(dann), _weights(bare)))
    tilted = train_da(data, DAConfig("tsda", lambda_t=1.0, taxonomy_input=False, seed=2, steps=60))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(dann), _weights(tilted)))  # lambda_t does act


def test_training_is_deterministic_by_seed():
    data = make_dt(seed=0)
    a, b = (train_da(data, DAConfig("tsda", seed=5, steps=40)) for _ in range(2))
    c = train_da(data, DAConfig("tsda", seed=6, steps=40))
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c)))


def test_the_taxonomy_input_is_the_domain_row_of_the_given_matrix():
    data = make_dt(seed=0)
    flat = train_da(data, DAConfig("tsda", steps=1), A=flat_matrix(14))
    x = flat.inputs(data.x[:3], np.array([0, 5, 13]))
    assert x.shape == (3, 2 + 14) and torch.equal(
        x[:, 2:], torch.from_numpy(flat_matrix(14)[[0, 5, 13]]).float()
    )
    assert train_da(data, DAConfig("dann", steps=1)).inputs(data.x[:3], np.zeros(3, int)).shape == (3, 2)


def test_oracle_learns_every_domain_and_source_only_fails_on_the_mirrored_half():
    data, test = make_dt(seed=0), make_dt(seed=100)
    oracle = accuracy_by_domain(train_da(data, DAConfig("oracle", steps=800)), test)
    source_only = accuracy_by_domain(train_da(data, DAConfig("source_only", steps=800)), test)
    assert oracle.mean() > 0.95
    assert (
        source_only[:3].mean() > 0.95 and source_only[test.theta > 0.75 * np.pi].mean() < 0.3
    )  # labels flipped


def test_model_selection_reads_source_labels_only():
    data = make_dt(seed=0)
    hidden = DomainData(
        data.x,
        np.where(data.is_source[data.domain], data.y, 1 - data.y),
        data.domain,
        data.theta,
        data.is_source,
        data.A,
        data.leaves,
    )  # every target label flipped
    configs = [DAConfig("dann", lambda_d=ld, steps=40) for ld in (0.3, 1.0)]
    (m1, s1), (m2, s2) = select_on_source(data, configs), select_on_source(hidden, configs)
    assert s1 == s2 and all(torch.equal(a, b) for a, b in zip(_weights(m1), _weights(m2)))


def test_bad_domain_data_names_the_fix():
    data = make_dt(seed=0)
    no_source = DomainData(data.x, data.y, data.domain, data.theta, np.zeros(14, bool), data.A, data.leaves)
    with pytest.raises(ValueError, match="No source domain"):
        train_da(no_source, DAConfig("dann", steps=1))
    with pytest.raises(ValueError, match="there are 14 domains"):
        train_da(data, DAConfig("tsda", steps=1), A=flat_matrix(13))
    with pytest.raises(ValueError, match="Unknown method 'coral'"):
        train_da(data, DAConfig("coral", steps=1))


def test_compare_over_seeds_gives_the_same_results_in_one_or_two_processes():
    datasets = {
        s: (
            make_dt(6, n_per_class=20, n_sources=2, seed=s),
            make_dt(6, n_per_class=20, n_sources=2, seed=50 + s),
        )
        for s in (0, 1)
    }
    kw = dict(lambda_d_grid=(1.0,), lambda_t_grid=(0.3, 1.0), steps=20)
    serial, parallel = (
        compare_over_seeds(datasets, n_jobs=1, **kw),
        compare_over_seeds(datasets, n_jobs=2, **kw),
    )
    assert serial == parallel
    r = serial[0]
    assert (
        set(r) == {"source-only", "DANN", "TSDA", "TSDA-flat", "oracle"} and len(r["TSDA"]["source_val"]) == 2
    )
    assert r["TSDA"]["chosen"]["lambda_t"] in (0.3, 1.0) and r["oracle"]["chosen"] == {}
    assert r["DANN"]["target"] == pytest.approx(np.mean(r["DANN"]["per_domain"][2:]))


def test_user_domain_data_with_bad_indices_or_no_labelled_point_names_the_fix():
    data = make_dt(6, n_sources=2, seed=0)
    stray = DomainData(
        data.x,
        data.y,
        np.where(data.domain == 5, 6, data.domain),
        data.theta,
        data.is_source,
        data.A,
        data.leaves,
    )
    with pytest.raises(ValueError, match=r"Domain indices must lie in \[0, 6\)"):
        train_da(stray, DAConfig("dann", steps=1))
    with pytest.raises(ValueError, match="No labelled point"):
        train_da(data, DAConfig("dann", steps=1), labelled=np.zeros(len(data.y), bool))
