"""Read an activation store: `ActivationStore` checks a store folder against its manifest and
streams its activations back as shuffled float32 batches (`activations` writes them).

Layout of a store folder:
  shard_00000.npy          (n, d_model) activations, float16 or float32
  shard_00000.tokens.npy   (n, 3) int32: token id, document id, token position in the document
  manifest.json            written last: its presence marks a complete store
Every file is written atomically and listed in the manifest with its size and sha256, so a
killed run (no manifest) is rebuilt and a truncated or altered shard is refused, never used.

Normalisation (as in SAELens' `normalize_activations="expected_average_only_in"`): the store
records `norm_scale = sqrt(d_model / E||x||^2)`; batches are multiplied by it when
`normalize=True`, so the mean squared norm is d_model whatever the model or layer, and one
sparsity coefficient means the same across them. Raw values stay on disk.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import MANIFEST_FILE, read_json, sha256_bytes

__all__ = [
    "ActivationStore",
]

FORMAT = "ssae-kit-activations"
VERSION = 1


class ActivationStore:
    """A complete activation store on disk; streams shuffled float32 batches shard by shard.

    Pass `model`, `layer` or `d_model` to check the store is the one you expect.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        model: str | None = None,
        layer: int | None = None,
        d_model: int | None = None,
        normalize: bool = True,
    ):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.exists():
            hint = "it is incomplete (a killed run?)" if self.path.exists() else "the folder does not exist"
            raise ValueError(
                f"No activation store at {self.path}: {hint}. Run cache_activations() to build it."
            )
        self.manifest: dict[str, Any] = read_json(
            manifest_path, "delete the store folder and run cache_activations() again."
        )
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise ValueError(
                f"{manifest_path} is not an ssae-kit activation manifest of version {VERSION}; rebuild it."
            )
        for key, want in (("model", model), ("layer", layer), ("d_model", d_model)):
            if want is not None and self.manifest[key] != want:
                raise ValueError(
                    f"Activation store {self.path} was made with {key}={self.manifest[key]!r}, "
                    f"not {want!r}. Point to the store for {key}={want!r} or rebuild with cache_activations()."
                )
        for shard in self.manifest["shards"]:
            for key in ("", "tokens_"):
                f = self.path / shard[f"{key}file"]
                if not f.exists() or f.stat().st_size != shard[f"{key}bytes"]:
                    raise ValueError(
                        f"Shard {f.name} of {self.path} is missing or truncated (checksum cannot match). "
                        "Delete the store folder and run cache_activations() again."
                    )
        self.normalize = normalize

    model_name = property(lambda self: self.manifest["model"])
    layer = property(lambda self: self.manifest["layer"])
    d_model = property(lambda self: self.manifest["d_model"])
    n_tokens = property(lambda self: self.manifest["n_tokens"])
    norm_scale = property(lambda self: self.manifest["norm_scale"])
    hook_name = property(lambda self: self.manifest["hook_name"])
    n_shards = property(lambda self: len(self.manifest["shards"]))

    @property
    def fingerprint(self) -> str:
        """A short hash of every shard's checksum: equal fingerprints mean the same activations,
        in the same shards (so the same data order for a given seed)."""
        return sha256_bytes(
            "".join(s["sha256"] + s["tokens_sha256"] for s in self.manifest["shards"]).encode()
        )[:16]

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, model={self.model_name!r}, layer={self.layer}, "
            f"d_model={self.d_model}, n_tokens={self.n_tokens}, shards={self.n_shards})"
        )

    def read_shard(self, i: int, normalize: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard i as (acts (n, D) float32, tokens (n, 3) int32), checksums verified.

        `normalize` (default: the store's setting) multiplies by `norm_scale`."""
        shard = self.manifest["shards"][i]
        acts = self._read(shard["file"], shard["sha256"])
        tokens = self._read(shard["tokens_file"], shard["tokens_sha256"])
        x = torch.from_numpy(acts.astype(np.float32))
        if self.normalize if normalize is None else normalize:
            x *= self.norm_scale
        return x, torch.from_numpy(tokens)

    def all_finite(self) -> bool:
        """True when every activation in the store is a finite number (reads every shard)."""
        return all(np.isfinite(self._read(s["file"], s["sha256"])).all() for s in self.manifest["shards"])

    def _read(self, name: str, sha: str) -> np.ndarray:
        data = (self.path / name).read_bytes()
        if sha256_bytes(data) != sha:
            raise ValueError(
                f"Checksum mismatch in {self.path / name}: the file changed after it was written. "
                "Delete the store folder and run cache_activations() again."
            )
        return np.load(io.BytesIO(data), allow_pickle=False)

    def shard_ids(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """The shards rank `rank` of `world_size` reads (round robin), so ranks never overlap."""
        if self.n_shards < world_size:
            raise ValueError(
                f"{self.path} has {self.n_shards} shard(s) for {world_size} ranks; "
                "rebuild it with a smaller shard_tokens so every rank gets at least one."
            )
        return list(range(rank, self.n_shards, world_size))

    def capped_batch(self, cap: int = 512) -> int:
        """`cap` tokens, or the whole store when it holds fewer: the batch of fine-tuning and TracIn."""
        return min(cap, self.n_tokens)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        buffer_shards: int = 4,
        drop_last: bool = False,
        with_tokens: bool = False,
        normalize: bool | None = None,
    ) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over this rank's shards in batches of (batch_size, D) float32.

        Shuffling permutes shard order, then rows inside a buffer of `buffer_shards` shards, so
        memory stays at about `buffer_shards` shards whatever the store's size.
        """
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer (rows per batch).")
        rng = np.random.default_rng(seed)
        ids = self.shard_ids(rank, world_size)
        if shuffle:
            ids = [ids[i] for i in rng.permutation(len(ids))]
        acts_left = torch.empty(0, self.d_model)
        tokens_left = torch.empty(0, 3, dtype=torch.int32)
        for g in range(0, len(ids), buffer_shards):
            parts = [self.read_shard(i, normalize) for i in ids[g : g + buffer_shards]]
            acts = torch.cat([acts_left] + [p[0] for p in parts])
            tokens = torch.cat([tokens_left] + [p[1] for p in parts])
            if shuffle:
                perm = torch.from_numpy(rng.permutation(len(acts)))
                acts, tokens = acts[perm], tokens[perm]
            n_full = len(acts) // batch_size * batch_size
            for s in range(0, n_full, batch_size):
                yield (
                    (acts[s : s + batch_size], tokens[s : s + batch_size])
                    if with_tokens
                    else acts[s : s + batch_size]
                )
            acts_left, tokens_left = acts[n_full:], tokens[n_full:]
        if len(acts_left) and not drop_last:
            yield (acts_left, tokens_left) if with_tokens else acts_left
