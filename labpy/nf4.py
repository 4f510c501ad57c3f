"""4-bit code books of the QLoRA paper (Dettmers et al. 2023, §3) and blockwise absmax quantization with any of them.

A 4-bit "data type" here is a code book: 16 (or 15) numbers in [-1, 1]. A weight tensor is cut into blocks of
`block` consecutive values (row-major, as bitsandbytes does); each block stores its absolute maximum (absmax)
and, per value, the index of the code nearest to value / absmax. Dequantizing multiplies the code by the absmax.

- **NF4** (NormalFloat): the code values are quantiles of N(0, 1), normalised to [-1, 1], with an exact zero:
  8 positive levels from the quantiles evenly spaced in probability between `offset` and 1/2, 7 negative ones
  the same way with one fewer step, and 0 (the paper's "asymmetric" type: the two halves' zeros merged).
  Consecutive positive levels enclose equal probability under the normal, and so do consecutive negative ones.
- **FP4**: bitsandbytes' 4-bit float (1 sign, 2 exponent, 1 mantissa bit, exponent bias 2, a subnormal 0.0625):
  {0, ±0.0625, ±2, ±3, ±4, ±6, ±8, ±12} / 12 — 15 distinct values (+0 and −0).
- **Int4**: symmetric integers −7 … 7 divided by 7 (15 evenly spaced values).

The page `papers/qlora.qmd` compares them on Gaussian tensors and on the lab LM's weights; `tests/test_nf4.py`
checks NF4's defining property against the normal CDF and the round trip against bitsandbytes'.
"""

from __future__ import annotations

from statistics import NormalDist

import torch

BLOCK = 64                       # QLoRA's block size for the weights' absmax
NESTED_BLOCK = 256               # double quantization: one fp32 scale per 256 absmaxes
# The outermost quantile of NF4: bitsandbytes' `create_normal_map(offset=0.9677083)`. It equals 1 − ½(1/30 + 1/32):
# the mean of the centres of the last bin when [0, 1] is cut into 15 and into 16 equal-probability bins.
NF4_OFFSET = 1 - (1 / 30 + 1 / 32) / 2
# NF4 as the paper lists it (its appendix on the NormalFloat data type) and as bitsandbytes hard-codes it.
NF4_PAPER = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0)


def _linspace(start: float, stop: float, n: int) -> list[float]:
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


def nf4_codebook(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, sorted, float64: 7 negative, an exact 0, 8 positive; min −1 and max 1."""
    normal = NormalDist()
    positive = [normal.inv_cdf(p) for p in _linspace(offset, 0.5, 9)[:-1]]      # 8 quantiles above the median
    negative = [-normal.inv_cdf(p) for p in _linspace(offset, 0.5, 8)[:-1]]     # 7 below it
    values = torch.tensor(sorted(negative + [0.0] + positive), dtype=torch.float64)
    return values / values.max()


def fp4_codebook() -> torch.Tensor:
    """bitsandbytes' FP4 (E2M1, bias 2, subnormal 0.0625), normalised to [-1, 1]: 15 distinct values, sorted."""
    magnitudes = [0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]
    values = sorted({m * s for m in magnitudes for s in (1.0, -1.0)})
    return torch.tensor(values, dtype=torch.float64) / 12.0


def int4_codebook() -> torch.Tensor:
    """Symmetric absmax int4: the integers −7 … 7 divided by 7 (15 values)."""
    return torch.arange(-7, 8, dtype=torch.float64) / 7.0


CODEBOOKS = {"NF4": nf4_codebook, "FP4": fp4_codebook, "Int4": int4_codebook}


def quantize_blockwise(x: torch.Tensor, codebook: torch.Tensor, block: int = BLOCK
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax): the index of the nearest code for every value of `x` (flattened, row-major; the last block
    zero-padded) and each block's absolute maximum. Nearest is decided by the midpoints between sorted codes."""
    flat = x.detach().reshape(-1).to(torch.float64)
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)            # (n_blocks, block)
    absmax = blocks.abs().amax(dim=1)                                            # (n_blocks,)
    scaled = blocks / absmax.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    codes = torch.sort(codebook.to(torch.float64)).values
    midpoints = (codes[1:] + codes[:-1]) / 2
    index = torch.bucketize(scaled, midpoints)                                   # (n_blocks, block) in 0..len-1
    return index.reshape(-1)[: flat.numel()], absmax


def dequantize_blockwise(index: torch.Tensor, absmax: torch.Tensor, codebook: torch.Tensor, shape: torch.Size,
                         block: int = BLOCK) -> torch.Tensor:
    """The values a 4-bit layer computes with: code × its block's absmax, in `shape` (float64)."""
    codes = torch.sort(codebook.to(torch.float64)).values
    block_of = torch.arange(index.numel()) // block
    return (codes[index] * absmax[block_of]).reshape(shape)


def roundtrip(x: torch.Tensor, codebook: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """`x` quantized blockwise to `codebook` and back, in x's dtype."""
    index, absmax = quantize_blockwise(x, codebook, block)
    return dequantize_blockwise(index, absmax, codebook, x.shape, block).to(x.dtype)


def code_entropy_bits(index: torch.Tensor, n_codes: int) -> float:
    """Entropy (bits) of how often each code is used: log2(n_codes) when every level is used equally."""
    p = torch.bincount(index, minlength=n_codes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def constant_bits_per_param(block: int = BLOCK, double_quant: bool = False, nested_block: int = NESTED_BLOCK,
                            absmax_bits: int = 32, nested_absmax_bits: int = 8) -> float:
    """Bits of quantization constants per weight (large tensors): one fp32 absmax per block, or with double
    quantization one 8-bit absmax per block plus one fp32 scale per `nested_block` absmaxes (QLoRA §3)."""
    if not double_quant:
        return absmax_bits / block
    return nested_absmax_bits / block + absmax_bits / (block * nested_block)
