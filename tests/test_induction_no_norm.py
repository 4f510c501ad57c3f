"""The no-LayerNorm induction model is the stored `induction` model with its norms removed and nothing else changed."""

from dataclasses import replace

import pytest

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
