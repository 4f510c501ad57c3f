import math

import pandas as pd
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


def test_rate_switch_by_hand():
    spec = TrainSpec(steps=110, lr=1.0, warmup_steps=10, switch_step=30, switch_lr=0.25)
    assert lr_at(spec, 0) == pytest.approx(0.1)            # the warm-up climbs to lr, not to the switched rate
    assert lr_at(spec, 29) == 1.0 and lr_at(spec, 30) == 0.25 and lr_at(spec, 109) == 0.25
    cosine = TrainSpec(steps=110, lr=1.0, warmup_steps=10, schedule="cosine", switch_step=30, switch_lr=0.25)
    assert lr_at(cosine, 60) == pytest.approx(0.125)        # halfway through the cosine, of the switched rate


@pytest.mark.parametrize("changes, message", [
    ({"switch_step": 20}, r"switch_lr = None must be given together with switch_step \(switch_step = 20"),
    ({"switch_lr": 0.1}, r"switch_lr = 0.1 must be given together with switch_step"),
    ({"switch_step": 5, "switch_lr": 0.1}, r"switch_step = 5 must fall after the warm-up .*10 < switch_step < 50"),
    ({"switch_step": 50, "switch_lr": 0.1}, r"switch_step = 50 must fall after"),
    ({"switch_step": 20, "switch_lr": -1.0}, r"switch_lr = -1.0 is out of range"),
])
def test_bad_rate_switch_is_named(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainSpec(steps=50, lr=1e-2, warmup_steps=10, **changes)


def test_rate_switch_changes_only_the_updates_after_it():
    """Up to the switch a switched run is the unswitched run, bit for bit; the updates after it take the new rate."""
    logs, states = [], []
    for switch in ({}, {"switch_step": 20, "switch_lr": 1e-3}):
        model, batch_fn, loss_fn = _problem()
        logs.append(train(model, batch_fn, loss_fn, TrainSpec(steps=40, lr=1e-2, checkpoint_steps=(20, 40), **switch)))
        states.append(logs[-1].checkpoints)
    plain, switched = logs
    assert all(torch.equal(states[0][20][k], states[1][20][k]) for k in states[0][20])
    assert not torch.equal(states[0][40]["0.weight"], states[1][40]["0.weight"])
    assert switched.steps.lr.tolist() == [1e-2] * 20 + [1e-3] * 20 and set(plain.steps.lr) == {1e-2}


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


def test_a_run_handed_on_with_its_weights_and_moments_is_the_run_in_one_go():
    """Training 20 steps, then 10 more from the log's optimizer_state and the weights, is the 30-step run bit for
    bit; starting the 10 with zero moments instead is not (the moments are what is handed on besides the weights)."""
    model, batch_fn, loss_fn = _problem()
    train(model, batch_fn, loss_fn, TrainSpec(steps=30, lr=1e-2))
    whole = model.state_dict()

    first, batch_fn, loss_fn = _problem()
    log = train(first, batch_fn, loss_fn, TrainSpec(steps=20, lr=1e-2))
    ends = []
    for moments in (log.optimizer_state, None):
        second, _, _ = _problem()
        second.load_state_dict(first.state_dict())
        train(second, lambda step: batch_fn(20 + step), loss_fn, TrainSpec(steps=10, lr=1e-2),
              initial_optimizer_state=moments)
        ends.append(second.state_dict())
    assert all(torch.equal(whole[k], ends[0][k]) for k in whole)
    assert not all(torch.equal(whole[k], ends[1][k]) for k in whole)
    assert log.optimizer_state["state"][0]["exp_avg"].device.type == "cpu"


def test_measuring_along_the_way_leaves_the_training_bit_identical():
    """Evaluations, parameter statistics and a stats_fn at extra steps read the model; they must not change it."""
    runs, measured = [], []
    reads = lambda context: [{"w": float(context.model[0].weight.detach().sum())}]      # a stats_fn that only reads
    for steps, stats in (((), None), ((1, 2, 5, 7, 11), reads)):
        model, batch_fn, loss_fn = _problem()
        log = train(model, batch_fn, loss_fn, TrainSpec(steps=30, lr=1e-2, eval_every=10, measure_steps=steps),
                    eval_fn=lambda m: {"probe": float(m(torch.ones(4, 8)).detach().sum())}, param_stats=bool(steps),
                    stats_fn=stats)
        runs.append(model.state_dict())
        measured.append(list(log.evals.step))
    assert measured == [[0, 10, 20, 30], [0, 1, 2, 5, 7, 10, 11, 20, 30]]       # the second run did measure more
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
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    model, batch_fn, loss_fn = _problem()

    def spy(m, batch):
        seen.append(torch.get_num_threads())
        return loss_fn(m, batch)

    try:
        train(model, batch_fn, spy, TrainSpec(steps=2, lr=1e-3))
        assert seen == [1, 1] and torch.get_num_threads() == 2
        assert math.isfinite(seen[0])
    finally:
        torch.set_num_threads(before)   # later tests read the process's thread count from provenance


# ---- errors a user can act on: divergence, a corrupt resume state, Ctrl-C ----

def test_divergence_is_a_lab_error_naming_step_lr_and_fix():
    from labpy.errors import LabError, TrainingDivergedError
    from labpy.experiments.lr_sweep import nonfinite_step

    model, batch_fn, loss_fn = _problem()

    def exploding(m, batch):
        return loss_fn(m, batch) * (float("nan") if m[0].weight.grad is not None else 1.0)  # finite at step 1

    with pytest.raises(TrainingDivergedError) as err:
        train(model, batch_fn, exploding, TrainSpec(steps=5, lr=0.3, grad_clip=None))
    assert isinstance(err.value, LabError) and isinstance(err.value, FloatingPointError)
    assert err.value.step == 2 and err.value.lr == 0.3 and math.isnan(err.value.loss)
    text = str(err.value)
    assert "\n" not in text and "at step 2" in text and "lr=0.3" in text and "--set lr=0.03" in text
    assert nonfinite_step(err.value) == 2.0


def _resume_reference(spec):
    model, batch_fn, loss_fn = _problem()
    log = train(model, batch_fn, loss_fn, spec, eval_fn=lambda m: {"w": m[0].weight.sum().item()})
    return model.state_dict(), log


@pytest.mark.parametrize("garbage", [b"\x00not a torch file at all" * 10, b"", b"PK\x03\x04truncated zip"])
def test_corrupt_resume_state_names_the_file_and_the_fix(tmp_path, garbage):
    from labpy.errors import LabError, ResumeStateError

    (tmp_path / "resume.pt").write_bytes(garbage)
    model, batch_fn, loss_fn = _problem()
    with pytest.raises(ResumeStateError) as err:
        train(model, batch_fn, loss_fn, TrainSpec(steps=5, lr=1e-2), work_dir=tmp_path)
    text = str(err.value)
    assert isinstance(err.value, LabError) and "\n" not in text
    assert str(tmp_path / "resume.pt") in text and "corrupt" in text and "delete it" in text and "step 0" in text


def test_truncated_or_foreign_resume_state_is_named_too(tmp_path):
    from labpy.errors import ResumeStateError

    spec = TrainSpec(steps=20, lr=1e-2, resume_every=5)
    model, batch_fn, loss_fn = _problem()

    def dying(step):
        if step == 12:
            raise KeyboardInterrupt
        return batch_fn(step)

    with pytest.raises(KeyboardInterrupt):
        train(model, dying, loss_fn, spec, work_dir=tmp_path)
    path = tmp_path / "resume.pt"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])                   # a write cut off half way (not by labpy)
    with pytest.raises(ResumeStateError, match="corrupt or unreadable"):
        train(*_problem(), spec, work_dir=tmp_path)
    torch.save({"something": "else"}, path)                      # a readable file that is no training state
    with pytest.raises(ResumeStateError, match="does not hold a training state"):
        train(*_problem(), spec, work_dir=tmp_path)
    path.write_bytes(whole)                                      # the right file, but for another model
    other = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with pytest.raises(ResumeStateError, match="does not fit this model.*delete it"):
        train(other, batch_fn, loss_fn, spec, work_dir=tmp_path)


@pytest.mark.parametrize("k", [1, 17, 20])
def test_ctrl_c_at_step_k_keeps_every_step_done_and_resumes_to_identical_weights(tmp_path, k):
    """No periodic save happens before k (resume_every is large): what the rerun resumes from is the state
    saved on the interrupt itself."""
    from labpy.errors import TrainingInterrupted

    spec = TrainSpec(steps=30, lr=1e-2, eval_every=5, resume_every=1000, checkpoint_steps=(0, 10, 30))
    expected, reference = _resume_reference(spec)
    model, batch_fn, loss_fn = _problem()

    def interrupted_at_k(step):
        if step == k:
            raise KeyboardInterrupt       # what Ctrl-C does while the batch of step k is being built
        return batch_fn(step)

    eval_fn = lambda m: {"w": m[0].weight.sum().item()}  # noqa: E731
    with pytest.raises(TrainingInterrupted) as err:
        train(model, interrupted_at_k, loss_fn, spec, eval_fn=eval_fn, work_dir=tmp_path)
    assert err.value.step == k and err.value.kept == k and err.value.work_dir == tmp_path
    assert f"progress up to step {k} is kept in {tmp_path}" in str(err.value)
    assert isinstance(err.value, KeyboardInterrupt)
    assert torch.load(tmp_path / "resume.pt", weights_only=False)["step"] == k
    assert not list(tmp_path.glob("*.tmp*"))

    model, batch_fn, loss_fn = _problem(seed=0)
    for p in model.parameters():          # a different init: the resume state must overwrite it
        torch.nn.init.normal_(p)
    log = train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn, work_dir=tmp_path)
    assert all(torch.equal(expected[n], model.state_dict()[n]) for n in expected)
    assert log.steps.loss.tolist() == reference.steps.loss.tolist()
    pd.testing.assert_frame_equal(log.evals, reference.evals)
    assert sorted(log.checkpoints) == [0, 10, 30]


def test_ctrl_c_without_a_work_dir_says_the_run_starts_over():
    from labpy.errors import TrainingInterrupted

    model, batch_fn, loss_fn = _problem()

    def interrupted(step):
        if step == 3:
            raise KeyboardInterrupt
        return batch_fn(step)

    with pytest.raises(TrainingInterrupted) as err:
        train(model, interrupted, loss_fn, TrainSpec(steps=10, lr=1e-2))
    assert err.value.work_dir is None and err.value.kept is None and "starts it over" in str(err.value)


def _resume_matches(tmp_path, spec, expected, reference) -> None:
    """Rerun from the resume state in `tmp_path`: weights and evals equal the uninterrupted reference run."""
    model, batch_fn, loss_fn = _problem()
    log = train(model, batch_fn, loss_fn, spec, eval_fn=lambda m: {"w": m[0].weight.sum().item()}, work_dir=tmp_path)
    assert all(torch.equal(expected[n], model.state_dict()[n]) for n in expected)
    pd.testing.assert_frame_equal(log.evals, reference.evals)


def test_an_interrupt_in_the_middle_of_an_update_keeps_the_last_whole_step(tmp_path):
    """A KeyboardInterrupt raised after the optimizer step but before the step is recorded (here: inside its
    eval) must not save that half-recorded state; the periodic save before it stands, and resumes exactly."""
    from labpy.errors import TrainingInterrupted

    spec = TrainSpec(steps=20, lr=1e-2, eval_every=5, resume_every=10)
    expected, reference = _resume_reference(spec)
    model, batch_fn, loss_fn = _problem()
    calls = []

    def eval_fn(m):
        calls.append(1)
        if len(calls) == 4:               # evals at 0, 5, 10, then the one at step 15
            raise KeyboardInterrupt
        return {"w": m[0].weight.sum().item()}

    with pytest.raises(TrainingInterrupted) as err:
        train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn, work_dir=tmp_path)
    assert err.value.kept == 10 and torch.load(tmp_path / "resume.pt", weights_only=False)["step"] == 10
    _resume_matches(tmp_path, spec, expected, reference)


def test_a_real_sigint_during_an_update_waits_for_the_step_then_saves_it(tmp_path):
    import signal

    from labpy.errors import TrainingInterrupted

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has a custom handler here; train() leaves it alone")
    spec = TrainSpec(steps=20, lr=1e-2, eval_every=5, resume_every=10)
    expected, reference = _resume_reference(spec)
    model, batch_fn, loss_fn = _problem()
    calls = []

    def eval_fn(m):
        calls.append(1)
        if len(calls) == 4:               # during the eval of step 15: Ctrl-C is held until the step is recorded
            signal.raise_signal(signal.SIGINT)
        return {"w": m[0].weight.sum().item()}

    with pytest.raises(TrainingInterrupted) as err:
        train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn, work_dir=tmp_path)
    assert err.value.kept == 15 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _resume_matches(tmp_path, spec, expected, reference)


def _fail_with(monkeypatch, exc):
    import labpy.cli

    def run_config(*args, **kwargs):
        raise exc

    monkeypatch.setattr(labpy.cli, "run_config", run_config)


@pytest.mark.parametrize("exc, code, expected", [
    ("interrupted", 130, "lab: interrupted; progress up to step 7 is kept in /tmp/work; run the same command again"),
    ("bare", 130, "lab: interrupted outside a training loop; entries already stored are kept"),
    ("corrupt", 2, "lab: error: resume state /tmp/work/resume.pt is corrupt"),
    ("diverged", 2, "lab: error: training diverged: the loss became nan at step 3 (lr=1e+12)"),
])
def test_cli_prints_one_line_for_interrupts_and_lab_errors(monkeypatch, capsys, tmp_store, exc, code, expected):
    from pathlib import Path

    from labpy.cli import main
    from labpy.errors import ResumeStateError, TrainingDivergedError, TrainingInterrupted

    error = {"interrupted": TrainingInterrupted(9, Path("/tmp/work"), 7), "bare": KeyboardInterrupt(),
             "corrupt": ResumeStateError("resume state /tmp/work/resume.pt is corrupt or unreadable (...)"),
             "diverged": TrainingDivergedError("training diverged: the loss became nan at step 3 (lr=1e+12); "
                                               "lower the learning rate", step=3, lr=1e12, loss=math.nan)}[exc]
    _fail_with(monkeypatch, error)
    assert main(["run", "induction", "--scale", "smoke", "--config", "two_layer", "--quiet"]) == code
    captured = capsys.readouterr()
    assert captured.err.startswith(expected) and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err + captured.out


def test_stop_fn_ends_training_at_the_first_evaluation_it_accepts_and_a_resume_stops_there_too(tmp_path):
    """Early stopping (grokking's "test accuracy has held") reads only the evaluations, so an interrupted run
    resumes to the same stopping step and the same weights."""
    spec = TrainSpec(steps=100, lr=1e-2, eval_every=5, resume_every=10)
    model, batch_fn, loss_fn = _problem()
    held_out = batch_fn(10_000)                                # a fixed evaluation batch, never trained on

    def eval_fn(m):
        return {"loss_eval": loss_fn(m, held_out).item()}

    full = train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn)
    threshold = float(full.evals.loss_eval.iloc[6])            # the value at step 30: reached by then
    first = int(full.evals.step[full.evals.loss_eval <= threshold].iloc[0])
    stop = lambda rows: rows[-1]["loss_eval"] <= threshold     # noqa: E731

    model, batch_fn, loss_fn = _problem()
    log = train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn, stop_fn=stop)
    assert 0 < first < spec.steps
    assert log.steps.step.iloc[-1] == first and log.evals.step.iloc[-1] == first
    expected = model.state_dict()

    model, batch_fn, loss_fn = _problem()

    def dying_batch_fn(step):
        if step == first - 2:
            raise KeyboardInterrupt
        return batch_fn(step)

    with pytest.raises(KeyboardInterrupt):
        train(model, dying_batch_fn, loss_fn, spec, eval_fn=eval_fn, stop_fn=stop, work_dir=tmp_path)
    model, batch_fn, loss_fn = _problem()
    resumed = train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn, stop_fn=stop, work_dir=tmp_path)
    assert resumed.steps.step.iloc[-1] == first
    assert all(torch.equal(expected[k], model.state_dict()[k]) for k in expected)
