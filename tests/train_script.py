"""Runs ssae_kit.train in its own process (for the kill/resume and torchrun tests).

Usage: python tests/train_script.py STORE_DIR OUT_DIR CONFIG_JSON RESUME(0|1)
Under torchrun every rank also writes its final weights to OUT_DIR/rank<r>.pt.
"""

import json
import os
import sys

import torch

from ssae_kit.store import ActivationStore
from ssae_kit.train import train
from ssae_kit.train_config import TrainConfig

store_dir, out_dir, cfg_json, resume = sys.argv[1:5]
result = train(
    ActivationStore(store_dir), TrainConfig(**json.loads(cfg_json)), out_dir=out_dir, resume=resume == "1"
)
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    torch.save(result.sae.state_dict(), os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
