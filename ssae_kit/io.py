"""On-disk names, the run layout, the kit's cache folder and atomic writes, in one place.

`RunLayout` names what a notebook's run folder holds (stores under `acts/`, SAEs under `saes/`,
selections, the split, `metrics.json`), so a later notebook finds an earlier one's artefacts by
the same names the earlier one wrote them under.

Every artefact the kit writes goes through `atomic_write_*`: a temp file in the same folder,
fsynced, then `os.replace`, so a killed run (or a power cut) never leaves a half-written file
under the final name. `atomic_write_dir` does the same for a set of files that belong together
(an SAE's config and weights), and `check_writable_dir` fails a long job before it starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "BEST_SSAE_KEY",
    "BEST_STRATEGY_KEY",
    "MAIN_SPARSITY_KEY",
    "ROWS_KEY",
    "SAE_CFG_FILE",
    "SSAE_DIRS_KEY",
    "RunLayout",
    "paper_table",
    "write_metrics",
]

CACHE_ENV = "SSAE_KIT_CACHE"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
SAE_CFG_FILE = "cfg.json"  # SAELens' name (sae_lens/constants.py)
SAE_WEIGHTS_FILE = "sae_weights.safetensors"  # SAELens' name
CHECKPOINT_FILE = "checkpoint.pt"  # a training run's resumable state, next to its SAE
LOG_FILE = "train_log.json"  # a training run's per-log-step metrics
ACTS_DIR = "acts"
LOCK_FILE = ".lock"
"""A folder's lock while a run writes into it (`folder_lock`)."""
LOCK_OWNER_FILE = ".lock.owner"
"""Which process holds the lock, for the message a second run gets."""
SAES_DIR = "saes"
GSAE_NAME = "gsae"
TERM_PREFIX = "term_t"
# Keys of notebook 02's metrics.json that notebooks 03 (the sparsity coefficients) and 04 (the best SSAE) read.
MAIN_SPARSITY_KEY = "main_sparsity_coefficient"
ROWS_KEY = "rows"
BEST_STRATEGY_KEY = "best_in_domain_strategy"
BEST_SSAE_KEY = "best_in_domain_ssae"  # its folder (seed and coefficient included), which 04 shows
SSAE_DIRS_KEY = "ssae_dirs"


@dataclass(frozen=True)
class RunLayout:
    """The artefacts of one notebook's run folder, by name: notebooks write and read them here."""

    run_dir: Path

    @property
    def metrics(self) -> Path:
        """The notebook's results (`write_metrics`)."""
        return self.run_dir / METRICS_FILE

    def read_metrics(self) -> dict[str, Any]:
        """The notebook's results; FileNotFoundError names the folder when that notebook has not run."""
        if not self.metrics.exists():
            raise FileNotFoundError(
                f"No {METRICS_FILE} in {self.run_dir}: run the notebook that writes this folder "
                "first, or point to the folder it wrote."
            )
        return read_json(self.metrics, "re-run the notebook that writes this folder.")

    def acts(self, name: str) -> Path:
        """An activation store, named after its data (a selection strategy, `general`, ...)."""
        return self.run_dir / ACTS_DIR / name

    @property
    def saes(self) -> Path:
        """The folder of the run's SAEs, one SAELens folder each."""
        return self.run_dir / SAES_DIR

    def sae(self, name: str) -> Path:
        """One SAE folder of the run (a training run's checkpoint and log sit next to its SAE)."""
        return self.saes / name

    @property
    def gsae(self) -> Path:
        """The general SAE the run's SSAEs start from (notebooks 02 and 05 save it here for 03, 04 and 06)."""
        return self.sae(GSAE_NAME)

    def ssae(self, strategy: str, sparsity_coefficient: float, seed: int) -> Path:
        """Notebook 02's SSAE fine-tuned on one selection at one sparsity coefficient and seed."""
        return self.sae(f"{strategy}_sparsity{sparsity_coefficient:g}_seed{seed}")

    def tilted_sae(self, tilt: float, sparsity_coefficient: float, tokens: int | None = None) -> Path:
        """Notebook 03's SSAE fine-tuned with TERM at `tilt` (ERM when 0); `tokens` names a budget other
        than the notebook's main one (the Pareto runs'), so runs of two budgets never share a folder."""
        name = f"sparsity{sparsity_coefficient:g}" + (f"_tok{tokens}" if tokens else "")
        return self.sae(f"{TERM_PREFIX}{tilt:g}_{name}" if tilt else f"erm_{name}")

    def term_saes(self) -> list[Path]:
        """Notebook 03's TERM SSAEs (not its ERM one), in name order; empty when there are none."""
        return sorted(self.saes.glob(f"{TERM_PREFIX}*")) if self.saes.exists() else []

    def bios_ssae(self, seed: int) -> Path:
        """Notebook 05's SSAE fine-tuned on bios for one seed (notebook 06 probes seed 0's)."""
        return self.sae(f"ssae_seed{seed}")

    def selection(self, strategy: str) -> Path:
        """Notebook 01's selection of one strategy (`Selection.save`)."""
        return self.run_dir / f"selection_{strategy}.jsonl"

    def split(self, part: str) -> Path:
        """One part of notebook 01's subdomain split: pool, seeds, heldout or ood."""
        return self.run_dir / f"split_{part}.jsonl"

    @property
    def split_counts(self) -> Path:
        """What notebook 01's split left out (near-duplicates), beside its parts."""
        return self.run_dir / "split_counts.json"


def cache_dir(*parts: str) -> Path:
    """The kit's cache folder (env `SSAE_KIT_CACHE`, else ~/.cache/ssae_kit), created on use."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssae_kit")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable_dir(path: str | Path) -> Path:
    """Create folder `path` if needed and prove a file can be written there.

    Called before any long work, so a run whose results could not be saved fails at once."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise ValueError(
            f"Cannot write to the output folder {path} ({'it is a file' if path.is_file() else err.strerror or err}): "
            "pass a folder you can write to, or fix its permissions."
        ) from err
    return path


def atomic_write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(f)` on a temp file next to `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; others may read what the kit writes
        os.replace(tmp, path)
        _fsync(path.parent)  # makes the rename itself durable
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold `folder`'s lock while a run writes into it, so a second run into the same folder fails
    at once, naming the first (its process id and start time), instead of both exiting 0 with the
    second's files silently winning. The lock is an OS file lock: a killed run releases it (its
    files stay behind, harmless, until the next run takes the lock)."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    owner = folder / LOCK_OWNER_FILE
    try:
        lock.acquire()
    except Timeout:
        first = owner.read_text().strip() if owner.exists() else "owner unknown"
        raise ValueError(
            f"{folder} is in use by another {what} ({first}): wait for it to finish, or write into another folder."
        ) from None
    try:
        owner.write_text(f"process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        yield
    finally:  # leave the folder as the run left it: no lock files once it is done
        owner.unlink(missing_ok=True)
        lock.release()
        (folder / LOCK_FILE).unlink(missing_ok=True)


def read_json(path: str | Path, fix: str) -> Any:
    """The JSON in `path`, or a ValueError naming the file and `fix` when it is not valid JSON (a
    killed editor, a truncated copy): a raw JSONDecodeError names neither."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): {fix}") from err


def read_jsonl(path: str | Path, fix: str) -> list[Any]:
    """One JSON value per non-blank line of `path`; a bad line is a ValueError naming the file, the line and `fix`."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}, is not valid JSON ({err}): {fix}") from err
    return rows


def _umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files a killed `atomic_write_with` left in `folder` (`.<name>.<random>.tmp`);
    the files they were to replace are untouched. Returns what was removed."""
    removed = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically, so readers never see a partial file."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_dir(path: str | Path, write: Callable[[Path], Any], marker: str) -> Path:
    """Write files that belong together as one unit: `write(tmp)` fills a new folder next to
    `path`; its files are fsynced, then moved into place.

    A new `path` is that folder renamed, so it appears complete or not at all. An existing folder
    may hold other files (a training run keeps its checkpoint next to its SAE), so there the old
    `marker` file is removed first and the new one moved in last: a folder that holds `marker`
    holds the files written with it, never a mix of two saves, and readers look for `marker`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        write(tmp)
        names = sorted((p.name for p in tmp.iterdir()), key=lambda name: name == marker)
        assert names and names[-1] == marker, f"write() must create {marker} in the folder it is given"
        for name in names:
            _fsync(tmp / name)
        if path.is_dir():
            (path / marker).unlink(missing_ok=True)
            for name in names:
                os.replace(tmp / name, path / name)
        else:
            os.replace(tmp, path)
        _fsync(path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (so renames in it survive a power cut), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def npy_bytes(arr: np.ndarray) -> bytes:
    """The bytes of `arr` in .npy format (so they can be checksummed and written atomically)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAPER_DIR = Path(__file__).resolve().parents[1] / "data" / "paper"


def paper_table(name: str) -> dict[str, Any]:
    """A paper's reference numbers (`data/paper/<name>.json`, sources in its README), which notebooks
    print beside their own: data, so no notebook hard-codes a published table."""
    path = PAPER_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in PAPER_DIR.glob("*.json"))
        raise FileNotFoundError(f"No paper table {name!r} in {PAPER_DIR}: choose from {known}.")
    return json.loads(path.read_text())


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write a notebook's results to `<run_dir>/metrics.json` (the file the tests assert on)."""
    path = RunLayout(Path(run_dir)).metrics
    atomic_write_json(path, metrics)
    return path


INJECTED_HEADER = "# Parameters\n"
"""How papermill's injected-parameters cell begins."""


def assigned_names(source: str) -> set[str]:
    """Names a cell of plain assignments (a parameters cell) assigns at top level."""
    import ast

    names = set()
    for node in ast.parse(source).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def check_parameters() -> None:
    """Refuse parameters papermill injected that the notebook's parameters cell does not declare:
    without this a stale or mistyped key (a preset in notebooks/*.yaml, `papermill -p`) is ignored
    silently and the notebook runs on its default. Reads the kernel's input history: the first cell
    run is the parameters cell, papermill's injected cell starts with "# Parameters". Outside
    papermill (nothing injected) it does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    history = [s for s in (shell.user_ns.get("In", []) if shell is not None else []) if s.strip()]
    injected = [s for s in history if s.startswith(INJECTED_HEADER)]
    if not injected or history[0].startswith(INJECTED_HEADER):
        return
    declared = assigned_names(history[0])
    if unknown := sorted(assigned_names(injected[-1]) - declared):
        raise ValueError(
            f"Unknown parameter(s) {unknown}: this notebook declares {sorted(declared)}. Rename or drop "
            "the key where it was passed (a preset in notebooks/*.yaml, or papermill -p)."
        )
