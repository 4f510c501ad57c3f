"""sae_topk: the top-k code against a hand-picked top k per instance, and a run whose codes keep at most k latents."""

import dataclasses

import pytest
import torch

from labpy.experiments.sae_topk import TopKAutoencoder
from labpy.toy.sae import SparseAutoencoder


def test_topk_code_keeps_each_instances_k_largest_relu_latents():
    torch.manual_seed(0)
    ks = (1, 3, 5)
    topk = TopKAutoencoder(ks, d_in=6, n_latents=12, seed=4)
    relu = SparseAutoencoder(len(ks), 6, 12, seed=4)                       # the same weights, plain ReLU code
    h = torch.randn(20, 6)
    f, dense = topk.encode(h), relu.encode(h)                              # (I, B, L)
    for i, k in enumerate(ks):
        for b in range(20):
            values, index = dense[i, b].topk(k)
            expected = torch.zeros(12)
            expected[index] = values
            assert torch.equal(f[i, b], expected)                          # ReLU zeros stay zero among the k
    assert ((f > 0).sum(-1) <= torch.tensor(ks).view(-1, 1)).all()


def test_run_codes_keep_at_most_k_latents(tmp_store):
    from labpy import results

    entry = results("sae_topk", "smoke")["dense"]
    sae = entry.table("sae")
    assert list(sae.k) == list(entry.config.ks)
    assert (sae.l0 <= sae.k + 1e-9).all() and sae.mmcs.between(0, 1).all()
    with pytest.raises(ValueError, match="ks"):
        dataclasses.replace(entry.config, ks=(1, 10_000))
