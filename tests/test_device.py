"""The device policy: one choice (CUDA when present, else CPU, `LAB_DEVICE` overrides) that training, evaluation
and provenance all follow. On a CPU-only machine the "other device" is the `meta` device, pinned with
`use_device`: a model or batch left behind on the CPU would show up there."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import namedtuple

import pytest
import torch

from labpy.device import DEVICE_ENV, lab_device, model_device, to_cpu, to_device, use_device
from labpy.errors import ConfigError
from labpy.provenance import collect, device_description
from labpy.train import TrainSpec, step_generator, train

META = torch.device("meta")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)


def test_default_is_cuda_when_present_else_cpu(no_env):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert lab_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only default")
def test_on_this_cpu_machine_the_policy_is_the_cpu(no_env):
    assert lab_device() == torch.device("cpu")


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu ", "auto", ""])
def test_env_cpu_and_auto(monkeypatch, value):
    monkeypatch.setenv(DEVICE_ENV, value)
    expected = "cpu" if value.strip().lower() == "cpu" or not torch.cuda.is_available() else "cuda"
    assert lab_device().type == expected


@pytest.mark.parametrize("value", ["tpu", "gpu", "cuda:x", "cpu:0", "cuda:-1", "meta"])
def test_bad_env_value_is_one_line_naming_the_variable_and_the_choices(monkeypatch, value):
    monkeypatch.setenv(DEVICE_ENV, value)
    with pytest.raises(ConfigError) as err:
        lab_device()
    text = str(err.value)
    assert "\n" not in text and f"LAB_DEVICE={value!r}" in text and "cpu, cuda or cuda:N" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3"])
def test_asking_for_cuda_without_cuda_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(DEVICE_ENV, value)
    with pytest.raises(ConfigError, match=r"sees no CUDA device here; use LAB_DEVICE=cpu"):
        lab_device()


def test_cli_reports_a_bad_device_as_one_line(monkeypatch, capsys, tmp_store):
    from labpy.cli import main

    monkeypatch.setenv(DEVICE_ENV, "tpu")
    assert main(["run", "induction", "--scale", "smoke", "--config", "two_layer", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lab: error: LAB_DEVICE='tpu'") and "Traceback" not in err


def test_use_device_pins_a_scope_and_restores_it(no_env):
    before = lab_device()
    with use_device(META) as pinned:
        assert pinned == META and lab_device() == META
        with use_device(None) as inner:          # None: whatever the policy says now
            assert inner == META
    assert lab_device() == before
    with pytest.raises(ConfigError, match="device='tpu'"):
        with use_device("tpu"):
            pass


@dataclasses.dataclass
class _Batch:
    x: torch.Tensor
    meta: dict
    name: str = "b"


Pair = namedtuple("Pair", "a b")


def test_to_device_moves_every_tensor_of_nested_batches_and_to_cpu_brings_them_back():
    batch = {"x": torch.ones(2), "pair": Pair(torch.zeros(1), [torch.ones(3), 5]),
             "dc": _Batch(torch.ones(1), {"y": torch.ones(2)}), "t": (torch.ones(1), "text")}
    moved = to_device(batch, META)
    leaves = [moved["x"], moved["pair"].a, moved["pair"].b[0], moved["dc"].x, moved["dc"].meta["y"], moved["t"][0]]
    assert all(t.device == META for t in leaves)
    assert isinstance(moved["pair"], Pair) and isinstance(moved["dc"], _Batch) and moved["pair"].b[1] == 5
    assert moved["t"][1] == "text" and moved["dc"].name == "b"
    assert batch["x"].device.type == "cpu"                      # the original is untouched
    grad = torch.ones(2, requires_grad=True) * 2
    back = to_cpu({"w": grad})
    assert back["w"].device.type == "cpu" and not back["w"].requires_grad
    cpu = torch.ones(3)
    assert to_device(cpu, "cpu") is cpu                         # already there: not copied


class _Spy(torch.nn.Module):
    """A regression model that records, at every forward, where each of its parameters lives."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.register_buffer("scale", torch.ones(1))
        self.seen: list[set[torch.device]] = []

    def forward(self, x):
        self.seen.append({p.device for p in self.parameters()} | {b.device for b in self.buffers()})
        return self.net(x) * self.scale


class _Stop(Exception):
    pass


def _spy_problem(batch_devices: list, eval_devices: list, stop_after: int | None = None):
    torch.manual_seed(0)
    model = _Spy()

    def batch_fn(step):                       # built on the CPU, as every experiment's batch_fn does
        x = torch.randn(16, 4, generator=step_generator(0, step))
        return {"x": x, "target": (x.sum(1, keepdim=True),)}

    def loss_fn(m, batch):
        batch_devices.append({batch["x"].device, batch["target"][0].device})
        loss = torch.nn.functional.mse_loss(m(batch["x"]), batch["target"][0])
        if stop_after is not None and len(batch_devices) >= stop_after:
            raise _Stop                       # meta tensors have no values: stop before `.item()`
        return loss

    def eval_fn(m):
        eval_devices.append(model_device(m))
        return {}

    return model, batch_fn, loss_fn, eval_fn


def test_training_moves_the_model_and_every_batch_to_the_policy_device(no_env):
    batches, evals = [], []
    model, batch_fn, loss_fn, eval_fn = _spy_problem(batches, evals)
    log = train(model, batch_fn, loss_fn, TrainSpec(steps=6, lr=1e-2, eval_every=3, checkpoint_steps=(0, 6)),
                eval_fn=eval_fn)
    device = lab_device()
    assert len(batches) == 6 and all(seen == {device} for seen in batches)
    assert model.seen and all(seen == {device} for seen in model.seen)
    assert evals == [device] * 3                                  # steps 0, 3, 6
    assert all(t.device.type == "cpu" for state in log.checkpoints.values() for t in state.values())


@pytest.mark.parametrize("how", ["policy", "argument"])
def test_training_follows_another_device_model_batches_and_eval(how, no_env):
    """A device other than the CPU (meta: shapes only) proves the moves happen: the model is built on the CPU,
    batches come from the CPU, and training must put both on the chosen device before the first forward."""
    batches, evals = [], []
    model, batch_fn, loss_fn, eval_fn = _spy_problem(batches, evals, stop_after=1)
    spec = TrainSpec(steps=5, lr=1e-2, eval_every=5)
    with pytest.raises(_Stop):
        if how == "policy":
            with use_device(META):
                train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn)
        else:
            train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn, device=META)
    assert evals == [META]                                        # the step-0 eval saw the model there
    assert batches == [{META}]                                    # the batch, every tensor in it
    assert model.seen == [{META}]                                 # every parameter and buffer, at the forward
    assert {p.device for p in model.parameters()} == {META}       # and it stays there after training


def test_provenance_names_the_policy_device(no_env, monkeypatch):
    assert device_description(torch.device("cpu")).startswith("cpu (")
    assert device_description() == device_description(lab_device())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    assert device_description(torch.device("cuda", 1)) == "cuda:1: Fake GPU"
    with use_device(torch.device("cuda", 0)):
        record = collect(0, 1.0, dt.datetime.now(dt.timezone.utc), "smoke", "abc")
    assert record["device"] == "cuda:0: Fake GPU"


@pytest.mark.parametrize("pinned", [None, "cpu"])
def test_a_stored_run_records_the_device_it_ran_on(pinned, tmp_store, monkeypatch, no_env):
    """run_config runs the experiment under the policy's choice (here a fake GPU) or the experiment's pinned
    device, and the provenance says the same device the run function saw."""
    import labpy.device as device_module
    from labpy.experiments.registry import Experiment, run_config
    from labpy.store import RunResult

    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = 1

    seen = []

    def run(config, ctx):
        seen.append(device_module.lab_device())
        return RunResult(summary={"n": config.n}, seed=0)

    fake_gpu = torch.device("cuda", 0)
    monkeypatch.setattr(device_module, "lab_device", _pinned_or(device_module, fake_gpu))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    exp = Experiment(name="device_probe", title="t", track="The lab itself", page="index.qmd", version=1,
                     config_type=Config, scales={"smoke": {"one": Config()}}, run=run, device=pinned)
    entry = run_config(exp, "smoke", "one", Config(), tmp_store, progress=False)
    if pinned is None:
        assert seen == [fake_gpu] and entry.provenance["device"] == "cuda:0: Fake GPU"
    else:
        assert seen == [torch.device("cpu")] and entry.provenance["device"].startswith("cpu (")


def _pinned_or(device_module, default: torch.device):
    """`lab_device` as the module defines it, with `default` in place of what this machine has."""
    def fake() -> torch.device:
        pinned = device_module._PINNED.get()
        return pinned if pinned is not None else default
    return fake


def test_the_provenance_names_the_cpu_kernels_a_run_rounds_with():
    from labpy.provenance import collect

    record = collect(0, 1.0, dt.datetime.now(dt.timezone.utc), "smoke", "abc", device="cpu")
    assert record["cpu"].endswith(f"(torch kernels: {torch.backends.cpu.get_cpu_capability()})")
    assert not record["cpu"].startswith("(")                   # a processor is named, even if only 'unknown processor'
