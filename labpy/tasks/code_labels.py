"""Python source cut into a language model's tokens, each labelled with properties a probe can look for.

Labels come from Python's own `tokenize` module, not from the language model, so they are ground truth:

- `in_string`, `in_comment`: the token's first non-blank character lies inside a string literal / a comment;
- `bracket_depth`: how many ( [ { are open at that character, outside strings and comments (0, 1, 2 = "2+");
- `has_digit`, `capitalised`: properties of the token's own text (a probe can read them off the token identity);
- `position_bucket`: the token's position in its window, in four equal buckets (a model with rotary position
  embeddings has no position in its token embeddings: any it shows, it computed).

Files are the held-out stdlib modules (`labpy.tasks.source_code`, docstrings stripped), so for the lab LM
they are unseen text; windows are spread evenly over each file, one file after another.
"""

from __future__ import annotations

import io
import tokenize
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import LabError
from .source_code import candidate_files, split_of, strip_docstrings

PROPERTIES = ("in_string", "in_comment", "bracket_depth", "has_digit", "capitalised", "position_bucket")
CONTEXTUAL = ("in_string", "in_comment", "bracket_depth", "position_bucket")   # need more than the token itself
OPEN, CLOSE = set("([{"), set(")]}")
N_POSITION_BUCKETS = 4
MAX_DEPTH = 2


@dataclass(frozen=True)
class LabelledWindows:
    tokens: torch.Tensor       # (N, T) token ids
    labels: pd.DataFrame       # one row per token: window, position, token_id, text, one column per property


def char_labels(source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per character of `source`: (in_string, in_comment, bracket depth), from Python's tokenizer."""
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def offset(row_col: tuple[int, int]) -> int:
        return line_starts[row_col[0] - 1] + row_col[1]

    n = len(source)
    in_string, in_comment = np.zeros(n, bool), np.zeros(n, bool)
    events: list[tuple[int, int]] = []                       # (char offset where depth changes, +1 / -1)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        start, end = offset(tok.start), offset(tok.end)
        if tok.type == tokenize.STRING:
            in_string[start:end] = True
        elif tok.type == tokenize.COMMENT:
            in_comment[start:end] = True
        elif tok.type == tokenize.OP and tok.string in OPEN:
            events.append((end, +1))                          # the opening bracket itself is outside
        elif tok.type == tokenize.OP and tok.string in CLOSE:
            events.append((start, -1))
    depth = np.zeros(n + 1, int)
    for at, change in events:
        depth[at] += change
    return in_string, in_comment, np.cumsum(depth)[:n]


def labelled_windows(tokenizer, n_windows: int, seq_len: int, windows_per_file: int = 3) -> LabelledWindows:
    """`n_windows` windows of `seq_len` tokens, `windows_per_file` spread evenly over each held-out file."""
    files = [p for p in candidate_files() if split_of(p.name, 0.2) == "heldout"]
    windows, rows = [], []
    for path in files:
        source = strip_docstrings(path.read_text())
        try:
            in_string, in_comment, depth = char_labels(source)
        except (tokenize.TokenError, SyntaxError, IndentationError):
            continue
        enc = tokenizer(source, return_offsets_mapping=True, add_special_tokens=False)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
        if len(ids) < windows_per_file * seq_len:
            continue
        stride = (len(ids) - seq_len) // max(windows_per_file - 1, 1)      # spread over the file, not its header
        for w in range(windows_per_file):
            if len(windows) == n_windows:
                break
            at = w * stride
            window = ids[at:at + seq_len]
            for pos, (token_id, (a, b)) in enumerate(zip(window, spans[at:at + seq_len])):
                text = source[a:b]
                first = a + (len(text) - len(text.lstrip())) if text.strip() else a    # first non-blank character
                first = min(first, len(source) - 1)
                rows.append({"window": len(windows), "position": pos, "token_id": token_id, "text": text,
                             "in_string": int(in_string[first]), "in_comment": int(in_comment[first]),
                             "bracket_depth": int(min(depth[first], MAX_DEPTH)),
                             "has_digit": int(any(c.isdigit() for c in text)),
                             "capitalised": int(text.strip()[:1].isupper()),
                             "position_bucket": pos * N_POSITION_BUCKETS // seq_len})
            windows.append(window)
        if len(windows) == n_windows:
            break
    if len(windows) < n_windows:
        raise LabError(f"n_windows={n_windows}: the held-out files give only {len(windows)} windows of "
                         f"{seq_len} tokens; ask for fewer or shorter windows")
    return LabelledWindows(tokens=torch.tensor(windows), labels=pd.DataFrame(rows))
