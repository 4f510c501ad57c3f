"""Random tokens with one random segment of random length repeated — the induction-heads task.

Everything outside the repeat is uniform noise (loss ln V is the best possible there); inside the second copy
every token after the first is predictable by looking back at what followed its earlier occurrence. The
segment's length varies, so no fixed positional offset solves the task: the model must find the earlier copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RepeatedSegmentTask:
    vocab: int = 50
    seq_len: int = 64
    min_segment: int = 6
    max_segment: int = 24

    def __post_init__(self) -> None:
        if not 2 <= self.min_segment <= self.max_segment or 2 * self.max_segment > self.seq_len:
            raise ValueError(
                f"need 2 <= min_segment <= max_segment and 2*max_segment <= seq_len; got min_segment="
                f"{self.min_segment}, max_segment={self.max_segment}, seq_len={self.seq_len}"
            )


@dataclass
class RepeatedBatch:
    tokens: torch.Tensor         # (B, T) long
    segment_start: torch.Tensor  # (B,) first position of the first copy
    segment_len: torch.Tensor    # (B,) length L of the segment; the second copy starts at start + L

    def target_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean masks over *target* positions 1..T-1, shape (B, T-1): first copy and predictable repeat.

        First copy: tokens start+1 .. start+L-1 (random, unpredictable). Repeat: tokens start+L+1 .. start+2L-1
        (each follows a token whose earlier occurrence shows what comes next). The first token of each copy is
        excluded: nothing announces where a copy begins.
        """
        T = self.tokens.shape[1]
        pos = torch.arange(1, T).unsqueeze(0)                       # (1, T-1) target positions
        s, L = self.segment_start.unsqueeze(1), self.segment_len.unsqueeze(1)
        first = (pos > s) & (pos < s + L)
        repeat = (pos > s + L) & (pos < s + 2 * L)
        return first, repeat


def sample(task: RepeatedSegmentTask, n: int, generator: torch.Generator) -> RepeatedBatch:
    tokens = torch.randint(0, task.vocab, (n, task.seq_len), generator=generator)
    lengths = torch.randint(task.min_segment, task.max_segment + 1, (n,), generator=generator)
    starts = (torch.rand(n, generator=generator) * (task.seq_len - 2 * lengths + 1)).long()
    for i in range(n):
        s, L = int(starts[i]), int(lengths[i])
        tokens[i, s + L : s + 2 * L] = tokens[i, s : s + L]
    return RepeatedBatch(tokens, starts, lengths)


def repeated_random_tokens(n: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """The standard probe for induction scores: `length` random tokens, then the same tokens again. (n, 2*length)"""
    half = torch.randint(0, vocab, (n, length), generator=generator)
    return torch.cat([half, half], dim=1)
