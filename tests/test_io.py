"""ssae_kit.io: files and folders are written whole or not at all; unwritable folders fail early; the
run layout names each artefact once for the notebook that writes it and those that read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from ssae_kit.io import (
    SAE_CFG_FILE,
    SAE_WEIGHTS_FILE,
    RunLayout,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    atomic_write_with,
    check_writable_dir,
    paper_table,
    remove_stale_temps,
    write_metrics,
)
from ssae_kit.sae import SAE, SAEConfig


def _writer(version: str):
    def write(folder: Path) -> None:
        (folder / "weights.bin").write_text(version)
        (folder / "cfg.json").write_text(version)

    return write


def test_atomic_write_dir_makes_a_new_folder_whole_or_not_at_all(tmp_path):
    atomic_write_dir(tmp_path / "sae", _writer("v1"), marker="cfg.json")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "weights.bin"]

    def crash(folder: Path) -> None:
        (folder / "weights.bin").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(tmp_path / "other", crash, marker="cfg.json")
    assert [p.name for p in tmp_path.iterdir()] == ["sae"], (
        "a partial folder or a temp folder was left behind"
    )


def test_atomic_write_dir_into_a_run_folder_keeps_its_other_files_and_never_mixes_two_saves(
    tmp_path, monkeypatch
):
    (tmp_path / "checkpoint.pt").write_text("ckpt")
    atomic_write_dir(tmp_path, _writer("v1"), marker="cfg.json")
    atomic_write_dir(tmp_path, _writer("v2"), marker="cfg.json")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "checkpoint.pt": "ckpt",
        "weights.bin": "v2",
        "cfg.json": "v2",
    }

    real_replace = os.replace

    def die_before_the_marker(src, dst):
        if Path(dst).name == "cfg.json":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_before_the_marker)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(tmp_path, _writer("v3"), marker="cfg.json")
    # The v2 config went before any v3 file came in, so no config ever describes other weights.
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "checkpoint.pt": "ckpt",
        "weights.bin": "v3",
    }


def test_sae_save_that_fails_while_writing_leaves_the_previous_sae_loadable(tmp_path, monkeypatch):
    old = SAE(SAEConfig(d_in=4, d_sae=8), seed=1)
    old.save(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ssae_kit.sae.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        SAE(SAEConfig(d_in=4, d_sae=16), seed=2).save(tmp_path)
    assert torch.equal(SAE.load(tmp_path).W_dec, old.W_dec)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SAE_CFG_FILE, SAE_WEIGHTS_FILE])


def test_atomic_write_with_keeps_the_old_file_when_the_writer_fails(tmp_path):
    atomic_write_with(tmp_path / "f.pt", lambda f: torch.save({"a": 1}, f))
    assert torch.load(tmp_path / "f.pt") == {"a": 1}

    def disk_full_midway(f) -> None:
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_with(tmp_path / "f.pt", disk_full_midway)
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"] and torch.load(tmp_path / "f.pt") == {"a": 1}


def test_check_writable_dir_creates_the_folder_or_says_why_it_cannot(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(
        ValueError, match=r"Cannot write to the output folder .*file.txt/run.*folder you can write to"
    ):
        check_writable_dir(tmp_path / "file.txt" / "run")
    with pytest.raises(ValueError, match=r"output folder .*file.txt \(it is a file\)"):
        check_writable_dir(tmp_path / "file.txt")


def test_run_layout_names_the_artefacts_notebooks_write_and_read(tmp_path):
    run = RunLayout(tmp_path)
    assert run.acts("dense") == tmp_path / "acts" / "dense" and run.gsae == tmp_path / "saes" / "gsae"
    assert (
        run.selection("bm25") == tmp_path / "selection_bm25.jsonl"
        and run.split("ood") == tmp_path / "split_ood.jsonl"
    )
    assert run.ssae("dense", 1.4, 0) == tmp_path / "saes" / "dense_sparsity1.4_seed0"
    assert run.tilted_sae(0.0, 2.0) == tmp_path / "saes" / "erm_sparsity2"
    assert run.tilted_sae(1e9, 2.0) == tmp_path / "saes" / "term_t1e+09_sparsity2"
    assert run.tilted_sae(2.0, 0.05, tokens=400_000) == tmp_path / "saes" / "term_t2_sparsity0.05_tok400000"
    assert run.bios_ssae(0) == tmp_path / "saes" / "ssae_seed0"


def test_run_layout_finds_only_term_saes_and_none_in_an_empty_run(tmp_path):
    run = RunLayout(tmp_path)
    assert run.term_saes() == []
    for tilt in (0.0, 2.0, 0.5):
        run.tilted_sae(tilt, 1.0).mkdir(parents=True)
    assert [p.name for p in run.term_saes()] == ["term_t0.5_sparsity1", "term_t2_sparsity1"], (
        "the ERM SSAE is not a TERM one"
    )


def test_read_metrics_returns_what_write_metrics_wrote_or_names_the_missing_folder(tmp_path):
    run = RunLayout(tmp_path / "02_train_ssae")
    with pytest.raises(FileNotFoundError, match=r"No metrics.json in .*02_train_ssae: run the notebook"):
        run.read_metrics()
    assert write_metrics(run.run_dir, {"main_sparsity_coefficient": 1.4}) == run.metrics
    assert run.read_metrics() == {"main_sparsity_coefficient": 1.4}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_leave_files_with_the_process_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_bytes(tmp_path / "b.bin", b"123")
    finally:
        os.umask(old)
    assert [stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.json", "b.bin")] == [mode, mode]


def test_remove_stale_temps_deletes_only_what_a_killed_write_left(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"good")
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".sae.1234abcd.tmp").mkdir()  # a folder write's temp dir is not touched here
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".checkpoint.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sae.1234abcd.tmp", "checkpoint.pt"]


def test_corrupt_json_is_refused_naming_the_file_and_the_fix(tmp_path):
    from ssae_kit import ActivationStore
    from ssae_kit.io import MANIFEST_FILE, METRICS_FILE, SAE_CFG_FILE
    from ssae_kit.retrieval import Selection

    for name in (MANIFEST_FILE, METRICS_FILE, SAE_CFG_FILE, "selection.jsonl"):
        (tmp_path / name).write_text('{"format": "ssae-kit-activ')
    with pytest.raises(ValueError, match=rf"{MANIFEST_FILE} is not valid JSON .*delete the store folder"):
        ActivationStore(tmp_path)
    with pytest.raises(ValueError, match=rf"{METRICS_FILE} is not valid JSON .*re-run the notebook"):
        RunLayout(tmp_path).read_metrics()
    with pytest.raises(ValueError, match=rf"{SAE_CFG_FILE} is not valid JSON .*save the SAE again"):
        SAE.load(tmp_path)
    with pytest.raises(ValueError, match=r"selection.jsonl, line 1, is not valid JSON .*re-run notebook 01"):
        Selection.load(tmp_path / "selection.jsonl")


def test_paper_tables_are_data_and_an_unknown_one_names_the_choices():
    shift = paper_table("shift_pythia70m")
    assert {"Original", "GSAE SHIFT", "SSAE SHIFT", "Oracle"} <= set(shift)
    assert all(len(row) == 3 and all(0 <= v <= 100 for v in row) for row in shift.values())
    assert set(paper_table("tsda_dt14")) == {"source-only", "DANN", "TSDA"}
    with pytest.raises(FileNotFoundError, match="tsda_dt14"):
        paper_table("tsda_dt40")
