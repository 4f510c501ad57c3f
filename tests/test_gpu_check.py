"""gpu_check at toy size on the CPU: the measurements against the models they check, the device hand-off
(scripts/gpu_check.py's run on a machine without the page-side packages, then store here), and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.gpu_check import SMOKE, GpuCheckConfig, attention_kernel_rows
from labpy.memory import Arch

ROOT = Path(__file__).resolve().parent.parent


def test_bad_cases_and_shapes_are_one_clear_line():
    with pytest.raises(ConfigError, match=r"qlora_cases entry '1,2048,xx' is not a case; write batch,seq_len"):
        GpuCheckConfig(qlora_cases=("1,2048,xx",))
    with pytest.raises(ConfigError, match=r"model = 'Qwen9' is not a model shape; use one of .*Qwen2.5-7B"):
        GpuCheckConfig(model="Qwen9")
    with pytest.raises(ConfigError, match="part"):
        GpuCheckConfig(part="everything")


def test_the_7b_shape_refuses_a_cpu_with_the_fix(tmp_path):
    from labpy.device import use_device
    from labpy.experiments.gpu_check import run
    from labpy.experiments.registry import RunContext

    with use_device("cpu"), pytest.raises(ConfigError, match="needs a CUDA device.*smoke scale runs on the CPU"):
        run(GpuCheckConfig(), RunContext(work_dir=tmp_path))


def test_attention_kernels_keep_what_autograd_needs():
    """On the CPU the flash kernel takes fp32 and keeps q, k, v, the output and the log-sum-exp; the math kernel
    keeps the T × T probabilities besides (hand counts for 4 query heads of 16 over 2 K/V heads, T = 32)."""
    arch = Arch(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=96, vocab=64)
    rows = {(r["dtype"], r["gqa"], r["backend"]): r for r in attention_kernel_rows(arch, 32, torch.device("cpu"), 0)}
    q_and_out, kv = 2 * 4 * 32 * 16 * 4, 2 * 2 * 32 * 16 * 4
    lse = 4 * 32 * 4
    assert rows["float32", True, "flash"]["saved_bytes"] == q_and_out + kv + lse
    assert rows["float32", False, "flash"]["saved_bytes"] == q_and_out + 2 * kv + lse     # K/V repeated per head
    math = rows["float32", True, "math"]["saved_bytes"]
    assert math >= rows["float32", True, "math"]["probabilities_bytes"] == 4 * 32 * 32 * 4
    assert not rows["float32", True, "efficient"]["runs"] and rows["float32", True, "efficient"]["error"]


def test_smoke_run_through_the_device_hand_off_matches_the_models(tmp_path):
    """`scripts/gpu_check.py run` with TransformerLens, Altair and IPython stubbed (as on the GPU machine), then
    `store` here: one verified entry whose capture keeps exactly the modelled bytes and whose QLoRA peaks are
    the memory model's within a few percent (the CPU stand-in for CUDA's allocator statistics)."""
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "LAB_RUNS_DIR": str(tmp_path / "runs"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "run", str(out), "--scale", "smoke", "--label",
                           "check", "--commit", "test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["git_commit"] == "test" and "transformer_lens" in provenance["stubbed_packages"]
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "store", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    from labpy.store import RunStore

    store = RunStore(tmp_path / "runs")
    (entry,) = list(store.entries())
    assert entry.config == SMOKE
    captures, qlora = entry.table("captures"), entry.table("qlora")
    assert (captures.cache_bytes == captures.model_cache).all()
    assert (qlora.peak_allocated / qlora.model_peak - 1)[~qlora.autocast_bf16].abs().max() < 0.05
    assert abs(entry.summary["resident_4bit_bytes"] / entry.summary["model_4bit_bytes"] - 1) < 0.01
    assert set(entry.table("small_models").scale) == {"smoke", "cpu"}


def test_whole_numbers_keep_every_digit_through_the_store(tmp_path):
    """The store writes floats with 6 significant digits; byte counts (NaN where a kernel refused) must survive."""
    import pandas as pd

    from labpy.experiments.gpu_check import exact_integers
    from labpy.store import RunResult, RunStore

    frame = pd.DataFrame({"saved_bytes": [117669904.0, float("nan")], "seconds": [0.0123456789, 1.5]})
    store = RunStore(tmp_path / "runs", read_only=False)
    entry = store.put("x", "k", {"label": "k"}, RunResult(tables={"t": exact_integers(frame)}), {})
    back = entry.table("t")
    assert back.saved_bytes.iloc[0] == 117669904 and pd.isna(back.saved_bytes.iloc[1])
    rounded = store.put("y", "k", {"label": "k"}, RunResult(tables={"t": frame}), {}).table("t")
    assert rounded.saved_bytes.iloc[0] != 117669904          # what the conversion is for
