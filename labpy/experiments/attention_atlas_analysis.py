"""Analysis the attention-heads page runs on the stored head scores (cheap: table lookups)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def best_heads(heads: pd.DataFrame, score: str, kind: str, n: int = 3) -> pd.DataFrame:
    """The `n` heads with the highest `score` on `kind` of text."""
    rows = heads[heads.kind == kind].nlargest(n, score)
    return rows.assign(label=[head_label(l, h) for l, h in zip(rows.layer, rows["head"])])


def formation_curves(heads: pd.DataFrame) -> pd.DataFrame:
    """One row per measured step of `attention_formation`: the best previous-token and induction scores of any
    head (with the head holding them) and the heads' mean entropy and first-token share."""
    rows = []
    for step, at in heads.groupby("step"):
        prev, ind = at.loc[at.previous_token.idxmax()], at.loc[at.induction.idxmax()]
        rows.append({"step": step, "best_previous_token": prev.previous_token,
                     "best_previous_head": head_label(int(prev.layer), int(prev["head"])),
                     "best_induction": ind.induction, "best_induction_head": head_label(int(ind.layer), int(ind["head"])),
                     "mean_entropy_bits": at.entropy_bits.mean(), "mean_first_token": at.first_token.mean()})
    return pd.DataFrame(rows)


def first_step_reaching(curve: pd.DataFrame, column: str, fraction: float) -> int:
    """The first step at which `column` reaches `fraction` of its value at the last step."""
    target = fraction * curve[column].iloc[-1]
    return int(curve.step[curve[column] >= target].iloc[0])


# ---- do query heads that share a key/value head share roles? --------------------------------------------------

SCORE_COLUMNS = ("previous_token", "duplicate_token", "induction", "first_token", "local_window", "entropy_bits")


def head_profiles(heads: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, head, kv_head) of one model, one column per score measured on each kind of text
    ("induction (repeated random)"), each standardised over the model's heads: a description of the head in which
    no score's units dominate the distance between two heads."""
    wide = heads.pivot_table(index=["layer", "head", "kv_head"], columns="kind",
                             values=[c for c in SCORE_COLUMNS if c in heads.columns])
    wide.columns = [f"{score} ({kind})" for score, kind in wide.columns]
    wide = wide.dropna(axis=1, how="all")
    return ((wide - wide.mean()) / wide.std(ddof=0)).reset_index()


def regroupings(n: int, size: int) -> np.ndarray:
    """(P, n) every way to split n heads into unlabelled groups of `size`, as group labels: the exact null of which
    heads share a key/value head (280 ways for 9 heads in threes)."""
    def split(rest: tuple[int, ...]):
        if not rest:
            yield []
            return
        first, others = rest[0], rest[1:]
        for mates in combinations(others, size - 1):
            left = tuple(h for h in others if h not in mates)
            for tail in split(left):
                yield [(first, *mates), *tail]

    out = []
    for groups in split(tuple(range(n))):
        labels = np.empty(n, dtype=int)
        for g, members in enumerate(groups):
            labels[list(members)] = g
        out.append(labels)
    return np.stack(out)


def within_across(profiles: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean distance between two heads of one group, and between heads of different groups (profiles (n, f))."""
    distance = np.linalg.norm(profiles[:, None] - profiles[None], axis=-1)            # (n, n)
    same = groups[:, None] == groups[None]
    off = ~np.eye(len(groups), dtype=bool)
    return float(distance[off & same].mean()), float(distance[off & ~same].mean())


def group_gap(profiles: np.ndarray, groups: np.ndarray) -> float:
    """Mean distance between heads of different groups less the mean distance within groups: positive when heads
    of one group are alike."""
    within, across = within_across(profiles, groups)
    return across - within


def kv_group_gaps(profiles: pd.DataFrame, samples: int = 20_000, seed: int = 0) -> tuple[pd.DataFrame, float]:
    """Per layer: mean distance within and across key/value groups, their gap, and the exact share of regroupings
    with a gap at least as large (`p`). With it, the p-value of the gap summed over layers, against regroupings
    drawn independently per layer (`samples` draws, seeded)."""
    features = [c for c in profiles.columns if c not in ("layer", "head", "kv_head")]
    rows, null_gaps = [], []
    for layer, at in profiles.groupby("layer"):
        x, groups = at[features].to_numpy(), at.kv_head.to_numpy()
        size = len(groups) // len(set(groups))
        every = np.array([group_gap(x, labels) for labels in regroupings(len(groups), size)])    # (P,)
        within, across = within_across(x, groups)
        gap = across - within
        rows.append({"layer": layer, "within": within, "across": across, "gap": gap,
                     "p": float((every >= gap - 1e-12).mean())})
        null_gaps.append(every)
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    null = sum(every[rng.integers(0, len(every), samples)] for every in null_gaps)              # (samples,)
    return table, float((1 + (null >= table.gap.sum() - 1e-12).sum()) / (1 + samples))


def group_eta2(heads: pd.DataFrame, score: str, kind: str) -> float:
    """Mean over layers of η² = between-group sum of squares / total sum of squares of `score` on `kind` of text,
    groups being the key/value heads: 1 when heads of a group score alike and groups differ; (G-1)/(n-1) expected
    by chance."""
    shares = []
    for _, at in heads[heads.kind == kind].groupby("layer"):
        x, mean = at[score], at[score].mean()
        total = ((x - mean) ** 2).sum()
        if total > 0:
            between = at.groupby("kv_head")[score].agg(lambda g: len(g) * (g.mean() - mean) ** 2).sum()
            shares.append(between / total)
    return float(np.mean(shares))
