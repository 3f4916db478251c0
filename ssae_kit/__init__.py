"""ssae-kit: Specialized Sparse Autoencoders, from data selection to debiasing."""

from .activations import ActivationStore, cache_activations
from .corpora import Contexts, Document, load_corpus, tokenize_contexts
from .evals import EvalResult, evaluate, evaluate_store
from .io import write_metrics
from .models import forward_to_layer, get_blocks, hook_name, load_model, splice, tiny_model
from .sae import SAE, SAEConfig, load_pretrained
from .term import tilted_loss
from .tracin import select_tracin, tracin_scores
from .train import TrainConfig, TrainResult, train

__all__ = [
    "SAE",
    "ActivationStore",
    "Contexts",
    "Document",
    "EvalResult",
    "SAEConfig",
    "TrainConfig",
    "TrainResult",
    "cache_activations",
    "evaluate",
    "evaluate_store",
    "forward_to_layer",
    "get_blocks",
    "hook_name",
    "load_corpus",
    "load_model",
    "load_pretrained",
    "select_tracin",
    "splice",
    "tilted_loss",
    "tiny_model",
    "tokenize_contexts",
    "tracin_scores",
    "train",
    "write_metrics",
]
