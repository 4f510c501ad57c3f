"""A small text corpus that ships with Python, its byte-level BPE tokenizer, batches and n-gram baselines.

Why this corpus: `pydoc_data.topics` (the text behind `help("topics")`, ~465k characters of English
documentation prose) and the standard library's docstrings (~1.6M characters) are on every machine with
Python, so the lab language model trains with no download. The tokenizer is a byte-level BPE trained with
HF `tokenizers`: every string round-trips, nothing is ever unknown.

Held-out text: `split_ids` takes every k-th block of tokens (not the tail), so the held-out set samples the
whole corpus and a train/held-out gap measures memorisation, not a shift of topic.
"""

from __future__ import annotations

import ast
import math
import sysconfig
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ..train import step_generator

if TYPE_CHECKING:
    # Imported where a tokenizer is wrapped instead: transformers takes ~1 s to import, which a page that only reads
    # stored tables should not pay.
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"      # the only special token: separates documents, pads batches (as in Qwen2)
VAL_FRACTION = 0.1         # the lab LM's held-out share of each text; A3's "original domain" uses the same split
SPLIT_BLOCK = 1024         # tokens per block when interleaving train and held-out blocks
# Qwen2's pre-tokenisation (transformers' Qwen2Tokenizer): words with their leading space or punctuation mark,
# single digits, punctuation runs, newlines. Using it verbatim means `AutoTokenizer` (which rebuilds a Qwen2
# tokenizer from vocab and merges) encodes exactly as the tokenizer trained here.
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
_SKIPPED_STDLIB = ("test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__")


def pydoc_text() -> str:
    """The pydoc topics, in sorted order of their names, separated by blank lines (~465k characters)."""
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[name].strip() for name in sorted(topics.topics))


@lru_cache(maxsize=1)
def stdlib_docstrings(min_chars: int = 40) -> str:
    """Docstrings of the standard library's modules, classes and functions, deduplicated, in file order.

    Test suites, idlelib and lib2to3 are skipped (tests are code-heavy, the others near-duplicates); docstrings
    shorter than `min_chars` ("Return self==value.") are mostly boilerplate. Takes ~5 s, hence cached.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIPPED_STDLIB or p.startswith("test") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    seen.setdefault(doc.strip())
    return "\n\n".join(seen)


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Qwen2's normaliser (NFC) and pre-tokeniser, and `EOS` as its one special token.

    Decoding gives back the NFC form of the text (the text itself for ASCII and most prose)."""
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed the 256 byte symbols plus {EOS}, got {vocab_size}; use >= 258")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The HF wrapper the rest of the stack expects (pad = eos = `EOS`, exact decoding)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   clean_up_tokenization_spaces=False)


def tokenizer_from_json(data: str | bytes) -> PreTrainedTokenizerFast:
    return wrap_tokenizer(Tokenizer.from_str(data.decode() if isinstance(data, bytes) else data))


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.LongTensor:
    """Token ids of `text` as one 1-D tensor (no special tokens added; long texts are fine)."""
    return torch.tensor(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)


def split_ids(ids: torch.Tensor, val_fraction: float = VAL_FRACTION,
              block: int = SPLIT_BLOCK) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(train, held-out): every k-th block of `block` tokens is held out, k = round(1 / val_fraction).

    Interleaved blocks keep both halves samples of the same text; a partial last block goes to train.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    every = max(2, round(1 / val_fraction))
    n_blocks = len(ids) // block
    is_val = torch.zeros(len(ids), dtype=torch.bool)
    for b in range(every - 1, n_blocks, every):
        is_val[b * block:(b + 1) * block] = True
    if not is_val.any():
        raise ValueError(f"{len(ids)} tokens are too few to hold out a block of {block}; pass a smaller block")
    return ids[~is_val], ids[is_val]


def lm_batch_fn(ids: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> Callable[[int], torch.LongTensor]:
    """`batch_fn(step) -> (B, T+1)` windows at random offsets, a pure function of (seed, step)."""
    if len(ids) <= seq_len + 1:
        raise ValueError(f"{len(ids)} tokens cannot fill a window of seq_len + 1 = {seq_len + 1}; lower seq_len")

    def batch_fn(step: int) -> torch.LongTensor:
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=step_generator(seed, step))  # (B,)
        return torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])                             # (B, T+1)

    return batch_fn


def eval_windows(ids: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.LongTensor:
    """Non-overlapping (N, T+1) windows for eval: all of `ids`, or at most `max_tokens` targets from windows
    spread evenly over it (so a capped eval still samples the whole text). Each target is scored once."""
    total = (len(ids) - 1) // seq_len
    if total < 1:
        raise ValueError(f"{len(ids)} tokens cannot fill one eval window of {seq_len + 1}; lower seq_len")
    n = total if max_tokens is None else min(total, max(1, max_tokens // seq_len))
    picks = torch.linspace(0, total - 1, n).round().long().unique().tolist()
    return torch.stack([ids[i * seq_len:i * seq_len + seq_len + 1] for i in picks])                     # (N, T+1)


# ---- n-gram reference entropies (nats per token) ----

def ngram_entropy(ids: torch.Tensor, order: int) -> float:
    """Plug-in entropy of the corpus's own n-gram statistics: H(X) for order 1, H(X_t | X_{t-1}) for order 2.

    This is the loss of a unigram (bigram) table fitted to, and scored on, the same tokens: a model that has
    learned only token frequencies (and which token follows which) sits here.
    """
    seq = ids.tolist()
    if order == 1:
        counts, n = Counter(seq), len(seq)
        return -sum(c / n * math.log(c / n) for c in counts.values())
    if order == 2:
        pairs, firsts = Counter(zip(seq[:-1], seq[1:])), Counter(seq[:-1])
        n = len(seq) - 1
        return -sum(c / n * math.log(c / firsts[a]) for (a, _), c in pairs.items())
    raise ValueError(f"order must be 1 (unigram) or 2 (bigram), got {order}")


def ngram_cross_entropy(train: torch.Tensor, heldout: torch.Tensor, order: int, vocab_size: int,
                        alpha: float = 0.1) -> float:
    """Held-out loss of an add-`alpha` smoothed unigram/bigram model fitted on `train`: a fair baseline for
    the model's held-out loss (the plug-in entropy flatters n-grams on text they were fitted to)."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (unigram) or 2 (bigram), got {order}")
    v = vocab_size
    uni = torch.bincount(train, minlength=v).double()                                          # (V,)
    if order == 1:
        logp = torch.log((uni + alpha) / (uni.sum() + alpha * v))
        return float(-logp[heldout].mean())
    pair = torch.zeros(v * v, dtype=torch.float64).index_add_(
        0, train[:-1] * v + train[1:], torch.ones(len(train) - 1, dtype=torch.float64)).view(v, v)  # (V, V)
    logp = torch.log((pair + alpha) / (pair.sum(1, keepdim=True) + alpha * v))
    return float(-logp[heldout[:-1], heldout[1:]].mean())


# ---- token kinds, for per-token loss ----

def token_kinds(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """A kind for every token id: word start (' word'), word continuation, digits, punctuation, whitespace,
    special. Byte-level BPE writes a leading space as 'Ġ' and a newline as 'Ċ'."""
    vocab = tokenizer.backend_tokenizer.get_vocab()
    kinds = ["special"] * len(vocab)
    decoder = decoders.ByteLevel()
    for piece, i in vocab.items():
        if piece == EOS:
            continue
        text = decoder.decode([piece])
        core = text.strip()
        if not core:
            kinds[i] = "whitespace"
        elif core.isdigit():
            kinds[i] = "digits"
        elif not any(ch.isalnum() for ch in core):
            kinds[i] = "punctuation"
        elif text[0].isspace():
            kinds[i] = "word start"
        else:
            kinds[i] = "word continuation"
    return kinds


def kinds_in_context(ids: torch.Tensor, tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """The kind of every token of `ids` in its context: a word piece is a word start when it begins with a
    space or follows a token ending in whitespace or punctuation (a word at a line start), else a continuation."""
    kinds = token_kinds(tokenizer)
    decoder = decoders.ByteLevel()
    pieces = tokenizer.backend_tokenizer.get_vocab()
    text_of = {i: decoder.decode([piece]) for piece, i in pieces.items()}
    out, previous = [], "\n"
    for i in ids.tolist():
        kind = kinds[i]
        if kind == "word continuation" and not (previous[-1:].isalnum() or previous[-1:] == "_"):
            kind = "word start"
        out.append(kind)
        previous = text_of[i]
    return out

