"""ssae_kit.train: learning, determinism, kill-and-resume, fine-tuning, DDP, and bad input."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssae_kit import ActivationStore, cache_activations
from ssae_kit.activations import store_from_tensor
from ssae_kit.checkpoints import TrainRun, TrainState, save_checkpoint
from ssae_kit.io import (
    CHECKPOINT_FILE,
    LOG_FILE,
    MANIFEST_FILE,
    SAE_CFG_FILE,
    SAE_WEIGHTS_FILE,
    npy_bytes,
    sha256_bytes,
)
from ssae_kit.sae import SAE, SAEConfig
from ssae_kit.train import fine_tune, train, train_step
from ssae_kit.train_config import TrainConfig, finetune_config, get_lr

SCRIPT = Path(__file__).with_name("train_script.py")


@pytest.fixture(scope="module")
def store(tiny, docs, tmp_path_factory):
    model, tok = tiny
    return cache_activations(
        model, tok, docs * 4, 1, tmp_path_factory.mktemp("store"), ctx_len=16, shard_tokens=500
    )


def small_cfg(**kw) -> TrainConfig:
    base = dict(
        d_sae=64,
        batch_size=64,
        total_tokens=64 * 60,
        sparsity_coefficient=0.1,
        warmup_tokens=640,
        log_every=10,
    )
    return TrainConfig(**{**base, **kw})


def test_train_step__reduces_loss_when_called_repeatedly_on_same_acts(store):
    sae = SAE(SAEConfig(d_in=store.d_model, d_sae=64, norm_scale=store.norm_scale))
    opt = torch.optim.Adam(sae.parameters())
    state = TrainState(tokens_since_fired=torch.zeros(64))
    x = next(store.batches(64, normalize=False))
    cfg = small_cfg(warmup_tokens=0)
    losses = [train_step(sae, sae, opt, x, cfg, state, 1, with_metrics=True)["loss"] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_training_lowers_reconstruction_error_for_every_architecture(store, arch):
    result = train(store, small_cfg(architecture=arch, k=8))
    first, last = result.log[0], result.log[-1]
    assert last["mse"] < 0.6 * first["mse"], f"{arch}: mse {first['mse']:.2f} -> {last['mse']:.2f}"
    assert last["tokens"] == 64 * 60 and result.sae.cfg.layer == store.layer
    if arch == "topk":
        assert last["l0"] <= 8


def test_same_seed_gives_identical_weights_and_another_seed_does_not(store):
    a, b, c = (train(store, small_cfg(seed=s)).sae for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_dec, c.W_dec)


def test_lr_schedule_warms_up_holds_then_decays_to_zero():
    cfg = TrainConfig(lr=1.0, warmup_tokens=100, total_tokens=1000, decay_frac=0.2, batch_size=10)
    assert get_lr(0, cfg) == pytest.approx(0.01) and get_lr(99, cfg) == 1.0
    assert get_lr(500, cfg) == 1.0 and get_lr(900, cfg) == pytest.approx(0.5) and get_lr(1000, cfg) == 0.0


def _run(store, out, cfg: TrainConfig, resume: bool = False, wait: bool = True):
    cmd = [
        sys.executable,
        str(SCRIPT),
        str(store.path),
        str(out),
        json.dumps(asdict(cfg)),
        "1" if resume else "0",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    return proc


def test_killed_run_resumed_ends_bit_identical_to_an_unkilled_run(store, tmp_path):
    cfg = small_cfg(total_tokens=64 * 3000, checkpoint_every=50, log_every=100)
    _run(store, tmp_path / "whole", cfg)
    proc = _run(store, tmp_path / "killed", cfg, wait=False)
    ckpt = tmp_path / "killed" / CHECKPOINT_FILE
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "killed" / SAE_WEIGHTS_FILE).exists(), "not killed mid-run"
    with pytest.raises(ValueError, match="resume=True"):
        train(store, cfg, out_dir=tmp_path / "killed")
    _run(store, tmp_path / "killed", cfg, resume=True)
    whole, resumed = (load_file(str(tmp_path / d / SAE_WEIGHTS_FILE)) for d in ("whole", "killed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    logs = [json.loads((tmp_path / d / LOG_FILE).read_text()) for d in ("whole", "killed")]
    assert logs[0] == logs[1]


def test_resuming_with_a_changed_config_is_refused(store, tmp_path):
    train(store, small_cfg(), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"config changed.*'lr': \(0.001, 0.01\)"):
        train(store, small_cfg(lr=0.01), out_dir=tmp_path, resume=True)


def test_resuming_a_finished_run_returns_it_without_training(store, tmp_path):
    first = train(store, small_cfg(), out_dir=tmp_path)
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = train(store, small_cfg(), out_dir=tmp_path, resume=True)
    assert torch.equal(first.sae.W_enc, again.sae.W_enc) and again.log == first.log
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp  # nothing rewritten


def test_fine_tuning_starts_from_the_gsae_and_leaves_it_untouched(store):
    gsae = train(store, small_cfg()).sae
    before = gsae.W_dec.clone()
    ssae = train(store, small_cfg(total_tokens=64 * 5, lr=1e-5, warmup_tokens=0, d_sae=999), init=gsae).sae
    assert torch.equal(gsae.W_dec, before)
    assert ssae.cfg.d_sae == 64 and ssae.cfg.norm_scale == gsae.cfg.norm_scale
    assert 0 < (ssae.W_dec - gsae.W_dec).abs().max() < 1e-2


def test_fine_tuning_from_a_sae_lens_sae(store):
    from sae_lens import StandardSAE, StandardSAEConfig

    lens = StandardSAE(StandardSAEConfig(d_in=store.d_model, d_sae=48))
    ssae = train(store, small_cfg(total_tokens=64 * 5), init=lens).sae
    assert ssae.cfg.d_sae == 48 and ssae.cfg.architecture == "relu"


def test_sae_of_another_width_or_layer_is_refused(store):
    with pytest.raises(ValueError, match="d_in=16 but these activations have d_model=32"):
        train(store, small_cfg(), init=SAE(SAEConfig(d_in=16, d_sae=8)))
    with pytest.raises(ValueError, match="trained on layer 5, not 1"):
        train(store, small_cfg(), init=SAE(SAEConfig(d_in=32, d_sae=8, layer=5)))


def test_dead_latents_are_counted_and_resampling_revives_them(store):
    gsae = SAE(SAEConfig(d_in=store.d_model, d_sae=64, norm_scale=store.norm_scale))
    with torch.no_grad():
        gsae.b_enc[:32] = -1e4  # half the latents can never fire
    cfg = small_cfg(dead_window_tokens=640, total_tokens=64 * 30, lr=1e-4)
    without = train(store, cfg, init=gsae)
    assert without.log[-1]["dead_frac"] >= 0.5
    revived = train(
        store, small_cfg(dead_window_tokens=640, total_tokens=64 * 30, lr=1e-4, resample_dead=True), init=gsae
    )
    assert revived.log[-1]["dead_frac"] < 0.25


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(tilt=-1.0), r"must be a number >= 0 \(0 is ERM"),
        (dict(tilt=float("nan")), "must be a number >= 0"),
        (dict(architecture="topk", k=100), "k=100 must be between 1 and d_sae=64"),
        (dict(lr=0.0), r"lr=0.0 must be a positive finite number, e.g. 1e-3"),
        (dict(lr=-1e-3), "lr=-0.001 must be a positive finite number"),
        (dict(lr=float("nan")), "lr=nan must be a positive finite number"),
        (dict(lr=float("inf")), "lr=inf must be a positive finite number"),
        (dict(sparsity_coefficient=-0.1), "sparsity_coefficient=-0.1 must be a finite number >= 0"),
        (dict(sparsity_coefficient=float("inf")), "sparsity_coefficient=inf must be a finite number >= 0"),
        (dict(warmup_tokens=-1), r"warmup_tokens=-1 must be >= 0 \(0: no warm-up\)"),
        (dict(d_sae=0), "d_sae=0 must be >= 1"),
        (dict(log_every=0), "log_every=0 must be >= 1"),
        (dict(checkpoint_every=-1), r"checkpoint_every=-1 must be >= 0 \(0: checkpoint only at the end\)"),
        (dict(dead_window_tokens=0), "dead_window_tokens=0 must be >= 1"),
        (dict(decay_frac=1.5), r"decay_frac=1.5 must be in \[0, 1\]"),
        (dict(batch_size=0), "batch_size=0 must be >= 1"),
        (dict(total_tokens=0), "total_tokens=0 must be >= 1"),
        (dict(k=0), "k=0 must be >= 1"),
        (
            dict(architecture="gated"),
            r"Unknown architecture 'gated'; use one of \('relu', 'topk', 'jumprelu'\)",
        ),
        (
            dict(tilt=1.0, loss_scale="max"),
            r"Unknown loss_scale 'max'; use one of \('mean', 'none'\)",
        ),
        (  # a typo here once silently meant "centered", and so another meaning of the coefficient
            dict(norm_scale_from="foo"),
            r"Unknown norm_scale_from 'foo'; use one of \('store', 'centered'\)",
        ),
        (
            dict(b_dec_init="median"),
            r"Unknown b_dec_init 'median'; use one of \('mean', 'zeros', 'geometric_median'\)",
        ),
    ],
)
def test_bad_training_configs_name_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        small_cfg(**kw)


def test_store_smaller_than_a_batch_is_refused(store):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(store, small_cfg(batch_size=10**6, total_tokens=10**6))


@pytest.mark.skipif(
    shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun missing"
)
def test_torchrun_two_ranks_match_single_process_training(store, tmp_path):
    cfg = small_cfg(total_tokens=64 * 150, lr=3e-3)
    single = train(store, cfg).sae
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        str(SCRIPT),
        str(store.path),
        str(tmp_path),
        json.dumps(asdict(cfg)),
        "0",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "ranks drifted apart"
    ddp = SAE.load(tmp_path)
    x = torch.cat(list(store.batches(256, normalize=False)))
    mse_single, mse_ddp = single(x).sq_error.mean().item(), ddp(x).sq_error.mean().item()
    assert mse_ddp == pytest.approx(mse_single, rel=0.15), (mse_single, mse_ddp)


def _poisoned_copy(store: ActivationStore, dest: Path, value: float) -> ActivationStore:
    """A copy of `store` with one activation row set to `value`, checksums updated (a damaged store)."""
    shutil.copytree(store.path, dest)
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    shard = manifest["shards"][1]
    acts = np.load(dest / shard["file"])
    acts[7] = value
    data = npy_bytes(acts)
    (dest / shard["file"]).write_bytes(data)
    shard.update(bytes=len(data), sha256=sha256_bytes(data))
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    return ActivationStore(dest)


def _assert_last_checkpoint_is_finite_and_no_sae_saved(out: Path, step: int) -> None:
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=False)
    assert ckpt["state"]["step"] == step, "the checkpoint is not the one just before the bad step"
    assert all(torch.isfinite(v).all() for v in ckpt["sae"].values())
    assert not (out / SAE_WEIGHTS_FILE).exists() and not (out / SAE_CFG_FILE).exists()


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_nan_or_inf_activations_stop_training_and_keep_the_last_good_checkpoint(store, tmp_path, value):
    bad = _poisoned_copy(store, tmp_path / "store", value)
    out = tmp_path / "run"
    with pytest.raises(
        ValueError, match="holds NaN/inf activations, so b_dec cannot start at their mean.*rebuild"
    ):
        train(
            bad, small_cfg(checkpoint_every=1, total_tokens=64 * 200), out_dir=out
        )  # the mean init refuses first
    assert not out.exists() or not os.listdir(out)
    with pytest.raises(
        ValueError, match=r"The loss is nan at step \d+ .*batch holds NaN/inf activations.*rebuild"
    ) as err:
        # zeros b_dec and the store's own scale measure nothing at init, so the training guard is reached
        cfg = small_cfg(
            checkpoint_every=1, total_tokens=64 * 200, b_dec_init="zeros", norm_scale_from="store"
        )
        train(bad, cfg, out_dir=out)
    step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    assert step > 1, "the bad row came first; pick another row so that a checkpoint precedes it"
    _assert_last_checkpoint_is_finite_and_no_sae_saved(out, step - 1)


def test_absurd_lr_stops_training_naming_the_step_and_the_lr(store, tmp_path):
    with pytest.raises(ValueError, match=r"at step 2 .*activations are finite.*lower lr \(now 1e\+30\)"):
        train(store, small_cfg(lr=1e30, warmup_tokens=0, checkpoint_every=1), out_dir=tmp_path)
    _assert_last_checkpoint_is_finite_and_no_sae_saved(tmp_path, 1)


def test_a_checkpoint_is_never_written_with_nan_weights(tmp_path):
    sae = SAE(SAEConfig(d_in=4, d_sae=8))
    with torch.no_grad():
        sae.W_enc[0, 0] = float("nan")
    state = TrainState(step=7, tokens_since_fired=torch.zeros(8))
    with pytest.raises(ValueError, match="weights hold NaN/inf at step 7.*keeps its last good checkpoint"):
        save_checkpoint(
            tmp_path,
            TrainRun(small_cfg(), {}, sae, torch.optim.Adam(sae.parameters()), state, torch.Generator()),
        )
    assert not os.listdir(tmp_path)


def test_resuming_on_another_store_is_refused(store, tiny, docs, tmp_path):
    train(store, small_cfg(), out_dir=tmp_path / "run")
    other = cache_activations(*tiny, docs * 3, 1, tmp_path / "other", ctx_len=16, shard_tokens=500)
    with pytest.raises(
        ValueError,
        match=r"trained on another activation store \(old, new\):.*'n_tokens'.*"
        "Resume with the store it was trained on, or train into a new out_dir",
    ):
        train(other, small_cfg(), out_dir=tmp_path / "run", resume=True)


def test_unwritable_out_dir_fails_before_training(store, tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("not a folder")
    module = sys.modules[train.__module__]  # `ssae_kit.train` is also the name of the function
    monkeypatch.setattr(module, "train_step", lambda *a, **k: pytest.fail("trained before checking out_dir"))
    with pytest.raises(ValueError, match="Cannot write to the output folder .*file.txt/run"):
        train(store, small_cfg(), out_dir=tmp_path / "file.txt" / "run")


def test_a_failed_final_save_rescues_the_run_into_the_cache(store, tmp_path, monkeypatch):
    monkeypatch.setenv("SSAE_KIT_CACHE", str(tmp_path / "cache"))
    real_save = SAE.save

    def disk_full_in_run(self, path):
        if Path(path).parent == tmp_path:
            raise OSError(28, "No space left on device")
        return real_save(self, path)

    monkeypatch.setattr(SAE, "save", disk_full_in_run)
    with pytest.raises(
        ValueError,
        match=r"Could not save the finished run in .*run \(.*No space left.*\); "
        r"it is saved in .*rescued_runs.*instead",
    ) as err:
        train(store, small_cfg(), out_dir=tmp_path / "run")
    rescue = Path(re.search(r"it is saved in (\S+) instead", str(err.value)).group(1))
    monkeypatch.setattr(SAE, "save", real_save)
    again = train(store, small_cfg(), out_dir=rescue, resume=True)  # returned as is: the run was not lost
    torch.testing.assert_close(SAE.load(rescue).W_dec, again.sae.W_dec)
    assert len(again.log) == 6


def test_resume_after_a_save_that_died_before_its_config_writes_the_sae(store, tmp_path):
    first = train(store, small_cfg(), out_dir=tmp_path)
    (tmp_path / SAE_CFG_FILE).unlink()  # what a crash between the weights and the config leaves
    train(store, small_cfg(), out_dir=tmp_path, resume=True)
    torch.testing.assert_close(SAE.load(tmp_path).W_dec, first.sae.W_dec)


def test_finetune_config_is_the_notebooks_ssae_recipe_erm_or_term(store, tmp_path):
    gsae = SAE(SAEConfig(d_in=32, d_sae=48))
    cfg = finetune_config(gsae, store, 2.0, 4096, seed=3)
    assert cfg == TrainConfig(
        d_sae=48,
        sparsity_coefficient=2.0,
        total_tokens=4096,
        lr=5e-4,
        warmup_tokens=0,
        batch_size=min(512, store.n_tokens),
        seed=3,
    )
    tilted = finetune_config(gsae, store, 2.0, 4096, lr=1e-4, tilt=0.5)
    assert (tilted.tilt, tilted.lr) == (0.5, 1e-4)
    small = finetune_config(gsae, store_from_tensor(torch.randn(100, store.d_model), tmp_path), 2.0, 400)
    assert small.batch_size == 100, "a store smaller than a batch is one batch"


class _Payload:
    """Unpickling this runs os.mkdir(target): the attack a shared run folder could carry."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_resuming_never_runs_code_from_a_checkpoint_and_refuses_it_naming_the_file(store, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    torch.save({"cfg": _Payload(str(marker))}, out / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint.pt.*hold code rather than data"):
        train(store, small_cfg(), out_dir=out, resume=True)
    assert not marker.exists(), "unpickling the checkpoint ran code"


@pytest.mark.parametrize("damage", ["truncated", "zeros", "not_a_checkpoint"])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_fix(store, tmp_path, damage):
    cfg = small_cfg(checkpoint_every=10)
    train(store, cfg, out_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "zeros":
        path.write_bytes(bytes(len(data)))
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=rf"Cannot resume from {re.escape(str(path))}.*Delete it"):
        train(store, cfg, out_dir=tmp_path, resume=True)


def test_a_checkpoint_loads_with_weights_only(store, tmp_path):
    train(store, small_cfg(checkpoint_every=10), out_dir=tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)  # what resume reads: data only
    assert ckpt["state"]["tokens"] == small_cfg().total_tokens


def test_resume_removes_the_temp_file_a_killed_checkpoint_write_left(store, tmp_path):
    cfg = small_cfg(checkpoint_every=10)
    train(store, cfg, out_dir=tmp_path)
    stale = tmp_path / f".{CHECKPOINT_FILE}.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(store, cfg, out_dir=tmp_path, resume=True)
    assert not stale.exists()


def test_a_second_training_run_into_a_folder_in_use_fails_at_once_naming_the_first(store, tmp_path):
    from ssae_kit.io import folder_lock

    in_use = rf"{re.escape(str(tmp_path))} is in use by another training run \(process {os.getpid()}"
    with folder_lock(tmp_path, "training run"), pytest.raises(ValueError, match=in_use):
        train(store, small_cfg(), out_dir=tmp_path)
    assert not (tmp_path / SAE_WEIGHTS_FILE).exists()
    train(store, small_cfg(), out_dir=tmp_path)  # the lock is released with the first run
    assert not any(p.name.startswith(".lock") for p in tmp_path.iterdir())


def test_a_store_passed_as_a_path_names_the_fix(store):
    with pytest.raises(TypeError, match=r"needs an ActivationStore, got str.*ActivationStore\(path\)"):
        train(str(store.path), small_cfg())


@pytest.mark.parametrize("tilt", [0.0, 1.0])
def test_sparse_relu_step_equals_the_dense_step_on_real_activations_through_the_shipped_gsae(tmp_path, tilt):
    """The shipped GSAE fires ~1% of its latents on real layer-6 activations, so training takes the
    sparse path; its loss and every gradient must match the dense path's (ERM and TERM)."""
    import ssae_kit.sae as sae_module
    from ssae_kit import load_corpus, load_model
    from ssae_kit.corpora import heldout_split
    from ssae_kit.gsae import load_pretrained
    from ssae_kit.train import objective, per_token_loss

    model, tok = load_model("smollm2-135m", device="cpu")
    held = heldout_split(load_corpus("bbc-news"))[1][:8]
    store = cache_activations(model, tok, held, layer=6, out_dir=tmp_path, max_tokens=1024, dtype="float32")
    x = next(store.batches(1024, seed=0, normalize=False))
    gsae = load_pretrained("ssae-kit", "smollm2-135m-l6-tech1")

    def loss_and_grads(limit: float):
        sae = copy.deepcopy(gsae)
        original = sae_module.SPARSE_RELU_MAX_DENSITY
        sae_module.SPARSE_RELU_MAX_DENSITY = limit
        try:
            out = sae(x)
        finally:
            sae_module.SPARSE_RELU_MAX_DENSITY = original
        loss = objective(per_token_loss(out.sq_error, out.sparsity, 1.5), tilt, "mean")
        loss.backward()
        return out, loss, {n: p.grad for n, p in sae.named_parameters()}

    dense, dense_loss, dense_grads = loss_and_grads(-1.0)
    sparse, sparse_loss, sparse_grads = loss_and_grads(sae_module.SPARSE_RELU_MAX_DENSITY)
    assert 0 < (dense.feature_acts > 0).float().mean() < sae_module.SPARSE_RELU_MAX_DENSITY
    # the dense path's latents carry gradient, the sparse path's are built for reporting only
    assert dense.feature_acts.requires_grad and not sparse.feature_acts.requires_grad
    assert sparse_loss.item() == pytest.approx(dense_loss.item(), rel=1e-5)
    torch.testing.assert_close(sparse.feature_acts, dense.feature_acts.detach())
    torch.testing.assert_close(sparse.sae_out.detach(), dense.sae_out.detach(), rtol=1e-5, atol=1e-5)
    for name, grad in dense_grads.items():
        # float rounding of sums over 1,024 tokens in another order: measured <= 7e-5 of the largest entry
        scale = grad.abs().max().item()
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=2e-4 * scale, msg=name)


def test_fine_tune_is_train_on_the_finetune_recipe_and_resumes_a_finished_run(store, tmp_path):
    gsae = train(store, small_cfg(d_sae=32, total_tokens=64 * 10)).sae
    tuned = fine_tune(gsae, store, 0.2, 64 * 8, tmp_path / "ssae", tilt=1.0, seed=4, device="cpu")
    cfg = finetune_config(gsae, store, 0.2, 64 * 8, tilt=1.0, seed=4, device="cpu")
    direct = train(store, cfg, init=gsae).sae
    assert torch.equal(tuned.W_dec, direct.W_dec) and not torch.equal(tuned.W_dec, gsae.W_dec)
    again = fine_tune(gsae, store, 0.2, 64 * 8, tmp_path / "ssae", tilt=1.0, seed=4, device="cpu")
    assert torch.equal(again.W_enc, tuned.W_enc), "a finished run in out_dir is returned"
