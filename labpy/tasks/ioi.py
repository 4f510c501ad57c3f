"""Indirect-object prompts (Wang et al. 2022) as clean/corrupted pairs that differ in exactly one token.

    clean:     When Mary and John went to the store, John gave a drink to   -> " Mary"  (the indirect object)
    corrupted: When Mary and John went to the store, Mary gave a drink to   -> " John"

Only the second mention of the subject (S2) changes, so the two runs are identical before it (a causal model
cannot tell them apart there) and the answer flips. The metric is the logit difference
logit(IO) − logit(S) at the last position: positive on the clean run, negative on the corrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LabError

TEMPLATES = {
    "store": "When{A} and{B} went to the store,{B} gave a drink to",
    "park": "After{A} and{B} went to the park,{B} handed a ball to",
}
WORDS = {
    "names": (" Mary", " John", " Tom", " Anna", " James", " Sarah", " David", " Emma", " Paul", " Lucy",
              " Mark", " Kate"),
    # single tokens of the lab LM's tokenizer (its training text is Python documentation): machinery checks only
    "python words": (" file", " list", " value", " name", " string", " line"),
}


@dataclass(frozen=True)
class IOIPairs:
    clean: torch.Tensor          # (B, T) token ids
    corrupted: torch.Tensor      # (B, T), equal to clean except at s2_position
    io: torch.Tensor             # (B,) the indirect object's token (the clean answer)
    s: torch.Tensor              # (B,) the subject's token (the corrupted answer)
    texts: list[str]             # the clean prompts
    position_labels: list[str]   # per position: the template's token, names as IO / S1 / S2
    s2_position: int
    io_position: int
    s1_position: int


def single_token(tokenizer, word: str) -> int | None:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def ioi_pairs(tokenizer, template: str = "store", words: str = "names", n_pairs: int = 8) -> IOIPairs:
    """`n_pairs` prompts: consecutive word pairs (A, B), each also swapped (B, A), so that (for even `n_pairs`)
    each word is the answer as often as the distractor."""
    if template not in TEMPLATES:
        raise LabError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    if words not in WORDS:
        raise LabError(f"unknown words {words!r}; choose one of {sorted(WORDS)}")
    ids = [(w, single_token(tokenizer, w)) for w in WORDS[words]]
    usable = [(w, i) for w, i in ids if i is not None]
    if len(usable) < 2 or n_pairs > len(usable) // 2 * 2:
        raise LabError(f"n_pairs={n_pairs}: the tokenizer has {len(usable)} single-token {words}, enough for "
                       f"{len(usable) // 2 * 2} pairs; ask for fewer")
    pairs = []
    for k in range(0, n_pairs, 2):
        a, b = usable[k], usable[k + 1]
        pairs += [(a, b), (b, a)][: n_pairs - k]
    text = TEMPLATES[template]
    clean_texts = [text.format(A=a[0], B=b[0]) for a, b in pairs]
    corrupt_texts = [text.format(A=a[0], B=b[0]).replace(f",{b[0]}", f",{a[0]}") for a, b in pairs]
    clean = [tokenizer(t).input_ids for t in clean_texts]
    corrupted = [tokenizer(t).input_ids for t in corrupt_texts]
    if len({len(c) for c in clean + corrupted}) != 1:
        raise LabError(f"template {template!r} tokenizes to different lengths for different {words}")
    clean_t, corrupt_t = torch.tensor(clean), torch.tensor(corrupted)                     # (B, T)
    differ = (clean_t != corrupt_t).nonzero()[:, 1].unique()
    assert len(differ) == 1, differ
    s2 = int(differ[0])
    a_id, b_id = pairs[0][0][1], pairs[0][1][1]
    io_pos = clean[0].index(a_id)
    s1_pos = clean[0].index(b_id)
    labels = [tokenizer.decode([t]) for t in clean[0]]
    for pos, name in ((io_pos, "IO"), (s1_pos, "S1"), (s2, "S2")):
        labels[pos] = f" [{name}]"
    return IOIPairs(clean=clean_t, corrupted=corrupt_t, io=torch.tensor([a[1] for a, _ in pairs]),
                    s=torch.tensor([b[1] for _, b in pairs]), texts=clean_texts, position_labels=labels,
                    s2_position=s2, io_position=io_pos, s1_position=s1_pos)
