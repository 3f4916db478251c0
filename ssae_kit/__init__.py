"""ssae-kit: Specialized Sparse Autoencoders, from data selection to debiasing."""

from .activations import ActivationStore, cache_activations
from .corpora import Contexts, Document, load_corpus, tokenize_contexts
from .io import write_metrics
from .models import forward_to_layer, get_blocks, hook_name, load_model, splice, tiny_model

__all__ = [
    "ActivationStore",
    "Contexts",
    "Document",
    "cache_activations",
    "forward_to_layer",
    "get_blocks",
    "hook_name",
    "load_corpus",
    "load_model",
    "splice",
    "tiny_model",
    "tokenize_contexts",
    "write_metrics",
]
