"""forgetting_analysis.update_norms: the total size of each LoRA run's update against the same size reached another
way, from the singular values the LoRA-rank page computes (‖ΔW‖_F² = Σ σᵢ²), and full fine-tuning runs left out."""

import pytest

from labpy.experiments.forgetting_analysis import update_norms
from labpy.experiments.lora_rank_analysis import rank_table, spectra


def test_update_norms_match_the_singular_values(tmp_store):
    from labpy import results

    runs = results("lora_rank", "smoke")
    table = update_norms(runs).set_index("run")
    assert set(table.index) == {label for label, e in runs.entries.items() if e.config.rank > 0}
    by_svd = rank_table(spectra(runs)).groupby("run").frobenius.apply(lambda f: float((f ** 2).sum() ** 0.5))
    for label, row in table.iterrows():
        assert row.update_norm == pytest.approx(by_svd[label], rel=1e-4) and row.update_norm > 0
