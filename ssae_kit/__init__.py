"""ssae-kit: Specialized Sparse Autoencoders, from data selection to debiasing.

The package exports what the notebooks import from it; each stage's module exports the rest of
what they use (its `__all__`).
"""

from .activations import cache_activations
from .corpora import load_corpus
from .evals import evaluate
from .io import write_metrics
from .models import load_model
from .sae import SAE
from .store import ActivationStore
from .train import train
from .train_config import TrainConfig

__all__ = [
    "SAE",
    "ActivationStore",
    "TrainConfig",
    "cache_activations",
    "evaluate",
    "load_corpus",
    "load_model",
    "train",
    "write_metrics",
]
