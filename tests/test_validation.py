"""Config validation: every numeric field of every experiment config has a range, checked when the config is
built (so `lab run X --set field=bad` fails at once, as one line), without changing any run-store key."""

from __future__ import annotations

import dataclasses
import math
import numbers

import pytest

from labpy.errors import ConfigError, LabError
from labpy.experiments import all_experiments, get_experiment, with_overrides
from labpy.experiments.batch_lr import BatchLRConfig
from labpy.experiments.induction import InductionConfig
from labpy.experiments.memory_model import MemoryModelConfig
from labpy.experiments.qlora import QLoRAConfig
from labpy.experiments.wind_tunnels import WindTunnelConfig
from labpy.finetune import FinetuneConfig
from labpy.train import TrainSpec
from labpy.validation import check_ranges, int_at_least, require


def _all_configs():
    for exp in all_experiments():
        for scale, configs in exp.scales.items():
            for label, config in configs.items():
                yield pytest.param(exp, config, id=f"{exp.name}-{scale}-{label}")


def _cpu_configs():
    for exp in all_experiments():
        for label, config in exp.scales.get("cpu", {}).items():
            yield pytest.param(exp, config, id=f"{exp.name}-{label}")


@pytest.mark.parametrize("exp, config", list(_all_configs()))
def test_every_declared_config_passes_and_rebuilding_it_keeps_its_key(exp, config):
    again = dataclasses.replace(config)                  # runs __post_init__ again
    assert again == config and exp.key(again, "x") == exp.key(config, "x")
    stored_form = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    assert type(config)(**stored_form) is not None       # pages rebuild configs from JSON (tuples as lists)


def test_every_experiment_config_class_validates():
    classes = {exp.config_type for exp in all_experiments()}
    missing = sorted(c.__name__ for c in classes if "__post_init__" not in vars(c))
    assert not missing, f"config classes without range checks: {missing}"


def _numeric_fields(config):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            yield f.name, value, False
        elif isinstance(value, tuple) and value and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                        for v in value):
            yield f.name, value, True


@pytest.mark.parametrize("exp, config", list(_cpu_configs()))
def test_every_numeric_field_has_a_range(exp, config):
    """No numeric field of any cpu config accepts -1 or NaN (nor a tuple holding one): each one is checked."""
    for name, value, is_tuple in _numeric_fields(config):
        for bad in (-1, math.nan):
            bad_value = (*value[:-1], bad) if is_tuple else bad
            with pytest.raises(ConfigError) as err:
                dataclasses.replace(config, **{name: bad_value})
            text = str(err.value)
            assert f"{type(config).__name__}.{name} = " in text and "\n" not in text, text
            assert err.value.field == name


@pytest.mark.parametrize("field, value", [
    ("eval_every", 0), ("batch_size", 0), ("lr", 0.0), ("lr", math.nan), ("lr", math.inf), ("lr", -1e-3),
    ("steps", 0), ("checkpoint_every", 0), ("eval_batch", 0), ("steps", 2.5), ("vocab", 1), ("weight_decay", -0.1),
])
def test_bad_values_name_the_class_field_value_and_range(field, value):
    with pytest.raises(ConfigError) as err:
        InductionConfig(**{field: value})
    text = str(err.value)
    assert text.startswith(f"InductionConfig.{field} = {value!r} is out of range; it must be ")
    assert f"(set it with --set {field}=" in text and "\n" not in text
    assert isinstance(err.value, LabError) and isinstance(err.value, ValueError)


def test_the_message_reads_as_one_sentence():
    with pytest.raises(ConfigError) as err:
        InductionConfig(eval_every=0)
    assert str(err.value) == ("InductionConfig.eval_every = 0 is out of range; it must be an integer >= 1 "
                              "(set it with --set eval_every=N)")


@pytest.mark.parametrize("make, field", [
    (lambda: FinetuneConfig(eval_every=0), "eval_every"),
    (lambda: FinetuneConfig(replay_rows=9, batch_size=8), "replay_rows"),
    (lambda: FinetuneConfig(schedule="linear"), "schedule"),
    (lambda: FinetuneConfig(rank=4, targets=()), "targets"),
    (lambda: BatchLRConfig(lrs=()), "lrs"),
    (lambda: BatchLRConfig(lrs=(1e-3, 0.0)), "lrs"),
    (lambda: BatchLRConfig(seeds=(0, -2)), "seeds"),
    (lambda: BatchLRConfig(eval_points=0), "eval_points"),
    (lambda: BatchLRConfig(noise_examples=1), "noise_examples"),
    (lambda: BatchLRConfig(kind="both"), "kind"),
    (lambda: BatchLRConfig(warmup_fraction=1.5), "warmup_fraction"),
    (lambda: QLoRAConfig(quant="3bit"), "quant"),
    (lambda: QLoRAConfig(timing_blocks=0), "timing_blocks"),
    (lambda: WindTunnelConfig(test_length_factor=0.5), "test_length_factor"),
    (lambda: WindTunnelConfig(d_model=64, n_heads=5), "d_model"),
    (lambda: WindTunnelConfig(task="maze"), "task"),
    (lambda: InductionConfig(min_segment=10, max_segment=8), "max_segment"),
    (lambda: InductionConfig(max_segment=40), "max_segment"),
    (lambda: InductionConfig(score_half=40), "score_half"),
    (lambda: MemoryModelConfig(cases=("fp32,sdpa,attn,16,nogc,4",)), "cases"),
    (lambda: MemoryModelConfig(cases=("3bit,sdpa,attn,16,nogc,4,256",)), "cases"),
    (lambda: MemoryModelConfig(reserve_gib=20.0), "reserve_gib"),
    (lambda: MemoryModelConfig(heads=8, kv_heads=3), "heads"),
    (lambda: TrainSpec(steps=10, lr=1e-3, eval_every=0), "eval_every"),
    (lambda: TrainSpec(steps=10, lr=1e-3, resume_every=0), "resume_every"),
    (lambda: TrainSpec(steps=10, lr=1e-3, grad_clip=0.0), "grad_clip"),
    (lambda: TrainSpec(steps=10, lr=1e-3, betas=(0.9, 1.0)), "betas"),
    (lambda: TrainSpec(steps=10, lr=1e-3, betas=(0.9,)), "betas"),
    (lambda: TrainSpec(steps=10, lr=1e-3, checkpoint_steps=(0, -5)), "checkpoint_steps"),
    (lambda: TrainSpec(steps=10, lr=math.nan), "lr"),
])
def test_ranges_and_combinations_of_other_configs(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field and f".{field} " in str(err.value) and "\n" not in str(err.value)


def test_train_spec_allows_no_clipping_and_has_no_cli_hint():
    assert TrainSpec(steps=1, lr=1e-3, grad_clip=None).grad_clip is None
    with pytest.raises(ConfigError) as err:
        TrainSpec(steps=0, lr=1e-3)
    assert str(err.value) == "TrainSpec.steps = 0 is out of range; it must be an integer >= 1"


def test_overrides_are_validated_like_the_config():
    config = get_experiment("induction").configs("smoke")["two_layer"]
    with pytest.raises(ConfigError, match="InductionConfig.eval_every = 0"):
        with_overrides(config, {"eval_every": "0"})
    finetune = get_experiment("lora_rank").configs("smoke")["r1_lr0.003"]
    with pytest.raises(ConfigError, match="replay_rows = 5 is out of range.*batch_size = 4"):
        with_overrides(finetune, {"replay_rows": "5"})
    assert with_overrides(finetune, {"replay_rows": "4"}).replay_rows == 4


def test_validation_helpers_on_a_class_of_ones_own():
    @dataclasses.dataclass(frozen=True)
    class Probe:
        n: int = 1
        xs: tuple[float, ...] = (0.5,)
        m: int = 3

        def __post_init__(self):
            check_ranges(self, positive_int=("n",), probability=("xs",), nonempty=("xs",),
                         rules={"m": int_at_least(3)})
            require(self, self.m >= self.n, "m", f"is out of range; it must be >= n = {self.n}")

    assert Probe(n=2, xs=(0.0, 1.0)).xs == (0.0, 1.0)
    with pytest.raises(ConfigError, match=r"Probe.xs = \(0.5, 2.0\) is out of range; every entry must be a number "
                                          r"in \[0, 1\] \(set it with --set xs=X1,X2,...\)"):
        Probe(xs=(0.5, 2.0))
    with pytest.raises(ConfigError, match=r"Probe.xs = \(\) is out of range; it must hold at least one entry"):
        Probe(xs=())
    with pytest.raises(ConfigError, match=r"Probe.n = True is out of range"):
        Probe(n=True)
    with pytest.raises(ConfigError, match=r"Probe.m = 3 is out of range; it must be >= n = 4"):
        Probe(n=4)


def test_cli_bad_value_is_one_line_with_exit_code_2(capsys, tmp_store):
    from labpy.cli import main

    assert main(["run", "induction", "--scale", "smoke", "--set", "eval_every=0"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("lab: error: InductionConfig.eval_every = 0 is out of range; it must be an integer "
                            ">= 1 (set it with --set eval_every=N)\n")
    assert not list(tmp_store.root.glob("induction/*"))


def test_cli_divergence_is_one_line_naming_step_lr_and_fix(capsys, tmp_store):
    """lr = 1e12 is a valid config (finite, > 0) but training blows up: one line, exit 2, no traceback."""
    from labpy.cli import main

    code = main(["run", "induction", "--scale", "smoke", "--config", "two_layer", "--set", "lr=1e12", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("lab: error: training diverged: the loss became")
    assert " at step " in captured.err and "lr=" in captured.err and "--set lr=1e+11" in captured.err
