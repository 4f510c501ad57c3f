"""What the QLoRA pages compute from the store: the share of parameters left unquantized and every number the
predictions are checked against. The training code is `qlora.py`.
"""

from __future__ import annotations

from .qlora import QUANTS


def unquantized_share(runs) -> float:
    """Share of the lab LM's parameters bitsandbytes leaves in full precision (embedding, norms, biases)."""
    linear = runs["4bit"].table("quant_error").params.sum()
    total = runs["fp32"].summary["resident_bytes"] / 4              # fp32: 4 bytes per parameter (and buffer)
    return float(1 - linear / total)


def measurements(runs) -> dict[str, float]:
    """Every number the page's predictions are checked against."""
    s = {q: runs[q].summary for q in QUANTS}
    timing = runs["timing"].summary
    out: dict[str, float] = {}
    for q in QUANTS:
        out[f"footprint_{q}"] = s[q]["memory_footprint_bytes"]
        out[f"resident_{q}"] = s[q]["resident_bytes"]
        for domain in ("source", "pydoc"):
            out[f"base_{domain}_{q}"] = s[q][f"base_{domain}"]
            out[f"final_{domain}_{q}"] = s[q][f"final_{domain}"]
    for q in ("8bit", "4bit"):
        out[f"footprint_ratio_{q}"] = s[q]["memory_footprint_bytes"] / s["fp32"]["memory_footprint_bytes"]
        out[f"resident_ratio_{q}"] = s[q]["resident_bytes"] / s["fp32"]["resident_bytes"]
        out[f"step_time_ratio_{q}"] = timing[f"step_time_ratio_{q}"]
        out[f"mean_rel_error_{q}"] = s[q]["mean_rel_error"]
        for domain in ("source", "pydoc"):
            out[f"gap_{domain}_{q}"] = s[q][f"final_{domain}"] - s["fp32"][f"final_{domain}"]
            out[f"base_gap_{domain}_{q}"] = s[q][f"base_{domain}"] - s["fp32"][f"base_{domain}"]
    return out
