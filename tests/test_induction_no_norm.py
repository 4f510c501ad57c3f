"""The no-LayerNorm induction model is the stored `induction` model with its norms removed and nothing else changed."""

from dataclasses import replace

import pytest
import torch

from labpy.experiments.induction import InductionConfig
from labpy.experiments.induction_no_norm import NoNormInductionConfig
from labpy.models.toy import ToyTransformer
from labpy.validation import ConfigError


def test_the_no_norm_model_drops_every_norm_and_changes_nothing_else():
    stored, bare = InductionConfig(), NoNormInductionConfig()
    assert bare.model_config() == replace(stored.model_config(), normalization=None)
    assert NoNormInductionConfig(normalization="LN").model_config() == stored.model_config()
    stored_spec, bare_spec = stored.train_spec(), bare.train_spec()
    assert replace(bare_spec, checkpoint_steps=stored_spec.checkpoint_steps) == stored_spec
    assert bare_spec.checkpoint_steps == (0, stored.steps)
    model = ToyTransformer(bare.model_config())
    assert not any("ln" in name for name, _ in model.named_parameters())
    with pytest.raises(ConfigError, match="normalization = 'layer'"):
        NoNormInductionConfig(normalization="layer")


def test_the_rms_run_keeps_the_divisor_and_drops_the_centring_and_the_bias():
    from labpy.experiments.induction_no_norm import BASE, RMS, _scale

    configs = _scale()
    assert configs[RMS] == replace(configs[BASE[0]], normalization="RMS")
    model = ToyTransformer(configs[RMS].model_config())
    norms = [module for module in model.modules() if type(module).__name__ == "Norm"]
    assert len(norms) == 3 and all(norm.bias is None for norm in norms)       # before each layer and the unembed
    x = torch.randn(2, 5, model.cfg.d_model) + 3.0                            # an offset the centring would remove
    expected = x / (x.pow(2).mean(-1, keepdim=True) + norms[0].eps).sqrt()    # by hand: divide by the RMS only
    torch.testing.assert_close(norms[0](x), expected)
