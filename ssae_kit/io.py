"""On-disk names, the kit's cache folder and atomic writes, in one place.

Every artefact the kit writes goes through `atomic_write_*`: a temp file in the same folder,
then `os.replace`, so a killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "SSAE_KIT_CACHE"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
SAE_CFG_FILE = "cfg.json"  # SAELens' name (sae_lens/constants.py)
SAE_WEIGHTS_FILE = "sae_weights.safetensors"  # SAELens' name


def cache_dir(*parts: str) -> Path:
    """The kit's cache folder (env `SSAE_KIT_CACHE`, else ~/.cache/ssae_kit), created on use."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssae_kit")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def npy_bytes(arr: np.ndarray) -> bytes:
    """The bytes of `arr` in .npy format (so they can be checksummed and written atomically)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write a notebook's results to `<run_dir>/metrics.json` (the file the tests assert on)."""
    path = Path(run_dir) / METRICS_FILE
    atomic_write_json(path, metrics)
    return path
