"""`make demo`'s driver (notebooks/run_all.py) says where it is: each notebook's start and end with
its wall time, an estimate of what remains from the last run's times, and a table at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOKS_DIR))
import run_all


def test_the_estimate_sums_the_last_runs_times_of_what_is_left_and_says_when_it_cannot():
    previous = {"01_retrieval": 120.0, "02_train_ssae": 600.0}
    assert run_all.estimate(previous, ["01_retrieval", "02_train_ssae"]) == (
        "2 to go, about 12 min left (the last run's times)"
    )
    assert run_all.estimate(previous, ["03_term_vs_erm"]) == (
        "1 to go (no earlier time for 03_term_vs_erm, so no estimate)"
    )
    assert run_all.estimate(previous, []) == "all notebooks done"


def test_timings_of_an_earlier_run_are_read_back_and_a_broken_file_reads_as_none(tmp_path):
    good, broken = tmp_path / "t.json", tmp_path / "b.json"
    good.write_text(json.dumps({"00_quickstart": 41}))
    broken.write_text("[1, 2")
    assert run_all.read_timings(good) == {"00_quickstart": 41.0}
    assert run_all.read_timings(broken) == {} and run_all.read_timings(tmp_path / "missing.json") == {}


def test_the_closing_table_lists_each_notebook_and_the_total():
    table = run_all.timing_table({"00_quickstart": 41.2, "01_retrieval": 30.0}, 75.0)
    assert table.splitlines() == [
        "| notebook | wall time |",
        "|---|---|",
        "| 00_quickstart | 41 s |",
        "| 01_retrieval | 30 s |",
        "| total | 1.2 min |",
    ]


def test_a_run_prints_its_progress_a_closing_table_and_records_its_times_for_the_next(tmp_path):
    command = [
        sys.executable,
        str(NOTEBOOKS_DIR / "run_all.py"),
        "--preset",
        "smoke",
        "--only",
        "00_quickstart",
    ]
    first = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert "== [1/1] 00_quickstart.ipynb ->" in first and "== 00_quickstart done in " in first
    assert "all notebooks done" in first and "| 00_quickstart |" in first and "| total |" in first
    assert set(json.loads((tmp_path / "timings_smoke.json").read_text())) == {"00_quickstart"}
