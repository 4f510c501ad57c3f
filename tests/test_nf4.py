"""The 4-bit code books of `labpy.nf4` against independent references: the normal CDF (NF4's defining
property), the values the QLoRA paper lists, and bitsandbytes' own tables and round trip on the CPU."""

from statistics import NormalDist

import pytest
import torch

from labpy import nf4


def test_nf4_levels_are_equal_probability_quantiles_of_the_normal():
    """The definition, checked with the CDF (the construction uses the inverse CDF): 7 negative levels, an exact
    zero, 8 positive; min −1 and max 1; consecutive levels of each half enclose equal normal probability, from
    ½ to the outermost quantile."""
    levels = nf4.nf4_codebook()
    assert levels.shape == (16,) and torch.all(levels.diff() > 0)
    assert (levels < 0).sum() == 7 and (levels == 0).sum() == 1 and (levels > 0).sum() == 8
    assert levels[0] == -1 and levels[-1] == 1
    normal = NormalDist()
    scale = normal.inv_cdf(nf4.NF4_OFFSET)
    for half, steps in ((levels[levels >= 0], 8), (-levels[levels <= 0].flip(0), 7)):
        p = torch.tensor([normal.cdf(float(v) * scale) for v in half], dtype=torch.float64)
        assert p[0] == pytest.approx(0.5) and p[-1] == pytest.approx(nf4.NF4_OFFSET)
        assert torch.allclose(p.diff(), torch.full((steps,), (nf4.NF4_OFFSET - 0.5) / steps, dtype=torch.float64),
                              rtol=1e-9, atol=0)


def test_nf4_matches_the_papers_values():
    assert torch.allclose(nf4.nf4_codebook(), torch.tensor(nf4.NF4_PAPER, dtype=torch.float64), atol=1e-6, rtol=0)
    assert nf4.NF4_OFFSET == pytest.approx(0.9677083, abs=1e-7)


def test_fp4_and_int4_code_books():
    fp4 = nf4.fp4_codebook()
    assert len(fp4) == 15 and fp4.max() == 1 and fp4.min() == -1 and 0 in fp4
    assert sorted(set((fp4 * 12).abs().tolist())) == [0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]
    assert torch.equal(nf4.int4_codebook() * 7, torch.arange(-7, 8, dtype=torch.float64))


def test_roundtrip_rounds_to_the_nearest_level_within_each_block():
    """Independent of bitsandbytes: brute-force argmin over the levels, block by block."""
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)   # 768 = 12 blocks
    for book in (nf4.nf4_codebook(), nf4.fp4_codebook(), nf4.int4_codebook()):
        blocks = x.reshape(-1, nf4.BLOCK)
        absmax = blocks.abs().amax(1, keepdim=True)
        nearest = book[(blocks / absmax).unsqueeze(-1).sub(book).abs().argmin(-1)] * absmax
        assert torch.allclose(nf4.roundtrip(x, book), nearest.reshape(x.shape), atol=1e-12, rtol=0)
    # a tail shorter than a block is quantized with its own absmax (2 here), not the first block's (10)
    first = torch.zeros(nf4.BLOCK, dtype=torch.float64)
    first[-1] = 10.0
    y = torch.cat([first, torch.tensor([0.3, -2.0, 1.2], dtype=torch.float64)])
    tail = nf4.roundtrip(y, nf4.int4_codebook())[nf4.BLOCK:]
    assert torch.allclose(tail, torch.tensor([2 / 7, -2.0, 8 / 7], dtype=torch.float64))   # 0.15 → 1/7, 0.6 → 4/7


def test_code_entropy_is_log2_of_the_levels_when_used_equally():
    assert nf4.code_entropy_bits(torch.arange(16).repeat(10), 16) == pytest.approx(4.0)
    assert nf4.code_entropy_bits(torch.zeros(5, dtype=torch.long), 16) == pytest.approx(0.0)


def test_constant_bits_per_param_follow_the_papers_arithmetic():
    assert nf4.constant_bits_per_param() == 0.5
    assert nf4.constant_bits_per_param(double_quant=True) == pytest.approx(8 / 64 + 32 / (64 * 256))
    assert nf4.constant_bits_per_param() - nf4.constant_bits_per_param(double_quant=True) == pytest.approx(0.373, abs=5e-4)


def test_against_bitsandbytes_on_the_cpu():
    """bitsandbytes' NF4 and FP4 tables, and its 4-bit quantize-dequantize round trip, reproduced exactly."""
    bnbf = pytest.importorskip("bitsandbytes.functional")
    assert torch.allclose(nf4.nf4_codebook(), bnbf.get_4bit_type("nf4", device="cpu").double(), atol=1e-6, rtol=0)
    fp4 = torch.unique(bnbf.get_4bit_type("fp4", device="cpu").double())
    assert torch.allclose(nf4.fp4_codebook(), fp4, atol=1e-6, rtol=0)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    for quant_type, book in (("nf4", nf4.nf4_codebook()), ("fp4", nf4.fp4_codebook())):
        packed, state = bnbf.quantize_4bit(x, blocksize=nf4.BLOCK, quant_type=quant_type)
        theirs = bnbf.dequantize_4bit(packed, state)
        assert torch.allclose(nf4.roundtrip(x, book), theirs, atol=1e-6, rtol=0), quant_type
