import math

import pytest
import torch

from labpy.train import TrainSpec, lr_at, step_generator, train


def _problem(seed: int = 0):
    """A small regression: y = x @ w_true, data a pure function of the step."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    w_true = torch.randn(8, 1, generator=torch.Generator().manual_seed(99))

    def batch_fn(step):
        x = torch.randn(32, 8, generator=step_generator(seed, step))
        return x, x @ w_true

    def loss_fn(m, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(m(x), y)

    return model, batch_fn, loss_fn


def test_learning_rate_schedule_by_hand():
    spec = TrainSpec(steps=110, lr=1.0, warmup_steps=10, schedule="cosine")
    assert lr_at(spec, 0) == pytest.approx(0.1)
    assert lr_at(spec, 9) == pytest.approx(1.0)
    assert lr_at(spec, 10) == pytest.approx(1.0)
    assert lr_at(spec, 60) == pytest.approx(0.5)          # halfway through the cosine
    assert lr_at(TrainSpec(steps=5, lr=0.3), 4) == 0.3


def test_bad_schedule_is_named():
    with pytest.raises(ValueError, match="'linear'.*constant, cosine"):
        TrainSpec(steps=10, lr=1e-3, schedule="linear")


def test_records_curves_and_checkpoints_and_learns():
    model, batch_fn, loss_fn = _problem()
    spec = TrainSpec(steps=60, lr=1e-2, eval_every=20, checkpoint_steps=(0, 30, 60))
    log = train(model, batch_fn, loss_fn, spec, eval_fn=lambda m: {"w_norm": m[0].weight.norm().item()})
    assert list(log.steps.columns) == ["step", "loss", "lr", "grad_norm"]
    assert log.steps.step.tolist() == list(range(1, 61))
    assert log.evals.step.tolist() == [0, 20, 40, 60]
    assert {"update_to_weight", "adam_m_abs_mean", "adam_sqrt_v_mean", "w_norm"} <= set(log.evals.columns)
    assert sorted(log.checkpoints) == [0, 30, 60]
    assert not torch.equal(log.checkpoints[0]["0.weight"], log.checkpoints[60]["0.weight"])
    assert log.steps.loss.iloc[-5:].mean() < 0.5 * log.steps.loss.iloc[:5].mean()


def test_deterministic_on_cpu():
    runs = []
    for _ in range(2):
        model, batch_fn, loss_fn = _problem()
        train(model, batch_fn, loss_fn, TrainSpec(steps=30, lr=1e-2))
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_resume_after_interruption_is_bit_identical(tmp_path):
    model, batch_fn, loss_fn = _problem()
    spec = TrainSpec(steps=50, lr=1e-2, resume_every=10, eval_every=10, checkpoint_steps=(25, 50))
    reference = train(model, batch_fn, loss_fn, spec)
    expected = model.state_dict()

    model, batch_fn, loss_fn = _problem()

    def dying_batch_fn(step):
        if step == 33:
            raise KeyboardInterrupt  # as if killed between the resume save at 30 and the end
        return batch_fn(step)

    with pytest.raises(KeyboardInterrupt):
        train(model, dying_batch_fn, loss_fn, spec, work_dir=tmp_path)
    assert (tmp_path / "resume.pt").is_file()

    model, batch_fn, loss_fn = _problem(seed=0)
    torch.manual_seed(123)  # a different init: the resume state must overwrite it
    for p in model.parameters():
        torch.nn.init.normal_(p)
    log = train(model, batch_fn, loss_fn, spec, work_dir=tmp_path)
    assert all(torch.equal(expected[k], model.state_dict()[k]) for k in expected)
    assert log.steps.step.tolist() == list(range(1, 51))
    assert log.steps.loss.tolist() == reference.steps.loss.tolist()
    assert sorted(log.checkpoints) == [25, 50]


def test_divergence_raises_with_the_fix():
    model, batch_fn, loss_fn = _problem()

    def exploding(m, batch):
        return loss_fn(m, batch) * float("inf")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(model, batch_fn, exploding, TrainSpec(steps=3, lr=1e-2, grad_clip=None))


def test_one_thread_during_training_then_restored():
    torch.set_num_threads(2)
    seen = []
    model, batch_fn, loss_fn = _problem()

    def spy(m, batch):
        seen.append(torch.get_num_threads())
        return loss_fn(m, batch)

    train(model, batch_fn, spy, TrainSpec(steps=2, lr=1e-3))
    assert seen == [1, 1] and torch.get_num_threads() == 2
    assert math.isfinite(seen[0])
