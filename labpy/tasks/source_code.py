"""A new domain for fine-tuning the lab LM: Python standard-library source code, read from this interpreter.

Why source code: the lab LM is pretrained on English prose that ships with Python (pydoc topics, docstrings),
so code is a shift it can learn quickly and measurably, and the original domain stays available to measure
forgetting. Docstrings are stripped (they are prose, and may be in the pretraining corpus); comments stay.

Determinism: the candidates are the top-level `*.py` modules of the stdlib folder, in name order. Each file
goes to `heldout` or `train` by a hash of its *name* alone, so the split never depends on which other files
exist, and train and held-out never share a file. Each split is then filled in name order up to a character
budget. The text depends on the Python version (recorded by `corpus_info`).
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UnknownChoiceError

SPLITS = ("train", "heldout")
FILE_SEPARATOR = "\n\n"


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder (e.g. `.../lib/python3.11`)."""
    return Path(sysconfig.get_paths()["stdlib"])


def candidate_files(root: Path | None = None, min_chars: int = 2_000, max_chars: int = 40_000) -> list[Path]:
    """Top-level stdlib modules of a moderate size, in name order.

    Tiny files are mostly re-export stubs; huge ones (`_pydecimal.py`) would dominate a small corpus.
    """
    root = root or stdlib_dir()
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("test"))
    return [p for p in files if min_chars <= p.stat().st_size <= max_chars]


def split_of(name: str, heldout_fraction: float) -> str:
    """`heldout` or `train` for a file name, from its SHA-256: stable across machines and file sets."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 16**8   # uniform in [0, 1)
    return "heldout" if bucket < heldout_fraction else "train"


def strip_docstrings(source: str) -> str:
    """Remove module, class and function docstrings (their whole lines); keep code and comments as written."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and len(node.body) > 1):
                drop.update(range(first.lineno, first.end_lineno + 1))   # 1-based line numbers
    lines = source.splitlines()
    return "\n".join(line for i, line in enumerate(lines, start=1) if i not in drop)


@dataclass(frozen=True)
class SourceCorpus:
    """The chosen files of one split and their text (files joined by a blank line)."""

    split: str
    files: tuple[str, ...]
    text: str


def source_corpus(split: str, max_chars: int = 400_000, heldout_fraction: float = 0.2,
                  docstrings: bool = False, root: Path | None = None) -> SourceCorpus:
    """The `train` or `heldout` source corpus: files of that split, in name order, until `max_chars`."""
    if split not in SPLITS:
        raise UnknownChoiceError("split", split, SPLITS, "for the stdlib source corpus")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}; e.g. 0.2")
    chosen, parts, total = [], [], 0
    for path in candidate_files(root):
        if split_of(path.name, heldout_fraction) != split:
            continue
        text = path.read_text(encoding="utf-8")
        if not docstrings:
            text = strip_docstrings(text)
        if total + len(text) > max_chars:
            continue                                 # try smaller files further on: fill the budget
        chosen.append(path.name)
        parts.append(text)
        total += len(text) + len(FILE_SEPARATOR)
    if not chosen:
        raise ValueError(f"no stdlib source files fit split {split!r} with max_chars={max_chars} in "
                         f"{root or stdlib_dir()}; raise max_chars")
    return SourceCorpus(split, tuple(chosen), FILE_SEPARATOR.join(parts))


def corpus_info(corpora: Sequence[SourceCorpus]) -> dict[str, object]:
    """What a run records about its data: Python version, files and characters per split."""
    info: dict[str, object] = {"python": sys.version.split()[0], "stdlib": str(stdlib_dir())}
    for c in corpora:
        info[f"{c.split}_files"] = len(c.files)
        info[f"{c.split}_chars"] = len(c.text)
    return info


def spaced_windows(ids: torch.Tensor, n_windows: int, seq_len: int) -> torch.Tensor:
    """Fixed, non-overlapping windows (n, seq_len + 1) spread evenly over a held-out stream: an eval set that
    samples every file of the split (`corpus.eval_windows` takes them from the start)."""
    span = seq_len + 1
    available = ids.numel() // span
    if available < 1:
        raise ValueError(f"a held-out stream of {ids.numel()} tokens holds no window of {span}; "
                         f"lower seq_len or raise max_chars")
    n = min(n_windows, available)
    chunks = torch.linspace(0, available - 1, n).round().long()           # distinct chunk indices
    return torch.stack([ids[c * span:(c + 1) * span] for c in chunks.tolist()])


@dataclass(frozen=True)
class FinetuneData:
    """Token streams and eval windows of a fine-tuning run: new domain (source) and original domain (pydoc)."""

    source_train: torch.Tensor                 # (N,) token ids of the train files
    pydoc_train: torch.Tensor                  # (M,) the lab LM's own training split of the pydoc topics (replay)
    eval_sets: dict[str, torch.Tensor]         # {"source": (n, T+1), "pydoc": (n, T+1)} held-out windows
    info: dict[str, object]


def finetune_data(tokenizer, seq_len: int, n_eval_windows: int, source_chars: int = 400_000,
                  heldout_chars: int = 240_000) -> FinetuneData:
    """Tokenize both domains with the lab LM's tokenizer.

    The pydoc held-out windows come from the lab LM's own held-out split (`corpus.split_ids` with its
    `VAL_FRACTION`), so the "original-domain loss" is on text the base model never trained on.
    """
    from .corpus import VAL_FRACTION, encode, pydoc_text, split_ids

    train, heldout = source_corpus("train", source_chars), source_corpus("heldout", heldout_chars)
    source_train, source_heldout = encode(tokenizer, train.text), encode(tokenizer, heldout.text)
    pydoc_train, pydoc_heldout = split_ids(encode(tokenizer, pydoc_text()), VAL_FRACTION)
    eval_sets = {"source": spaced_windows(source_heldout, n_eval_windows, seq_len),
                 "pydoc": spaced_windows(pydoc_heldout, n_eval_windows, seq_len)}
    info = {**corpus_info([train, heldout]), "source_train_tokens": source_train.numel(),
            "source_heldout_tokens": source_heldout.numel(), "pydoc_train_tokens": pydoc_train.numel(),
            "pydoc_heldout_tokens": pydoc_heldout.numel(), "chars_per_token_source": len(train.text) / source_train.numel()}
    return FinetuneData(source_train, pydoc_train, eval_sets, info)


def prose_and_code_windows(tokenizer, n_windows: int, length: int) -> dict[str, torch.Tensor]:
    """{"prose", "code"}: (n_windows, length) token ids spread evenly over the pydoc topics (English prose, the
    lab LM's own training text) and held-out stdlib source (Python the lab LM never saw) — the two kinds of
    text the interpretability experiments compare."""
    from .corpus import encode, pydoc_text   # as finetune_data does: corpus pulls in the training stack

    texts = {"prose": pydoc_text(), "code": source_corpus("heldout", max_chars=200_000).text}
    return {kind: spaced_windows(encode(tokenizer, text), n_windows, length - 1) for kind, text in texts.items()}
