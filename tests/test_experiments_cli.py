import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from labpy.cli import main
from labpy.experiments import get_experiment, results, with_overrides
from labpy.experiments import induction_analysis
from labpy.experiments.induction import EVAL_SEED, next_token_losses
from labpy.tasks.repeated_tokens import sample
from labpy.train import step_generator


def _lab(*args, env=None):
    return subprocess.run([sys.executable, "-m", "labpy.cli", *args], capture_output=True, text=True, env=env)


def test_induction_smoke_run_stores_everything_the_page_needs(tmp_store):
    runs = results("induction", scale="smoke")
    assert runs.scale == "smoke" and set(runs.entries) == {"two_layer", "one_layer"}
    two = runs["two_layer"]
    assert set(two.table_names()) == {"evals", "steps"}
    assert {"loss_first_copy", "loss_repeat", "acc_repeat"} <= set(two.table("evals").columns)
    assert two.checkpoint_names() == ["step_000000", "step_000030", "step_000060"]
    assert two.provenance["scale"] == "smoke" and "cpu" in two.provenance["device"]
    assert "1 torch thread)" in two.provenance["device"]
    scores = induction_analysis.head_scores_over_training(two)
    assert len(scores) == 3 * 8 and set(scores.step) == {0, 30, 60}
    ablation = induction_analysis.ablation_table(two)
    assert ablation.ablated.tolist() == ["none", "L0H0", "L0H1", "L0H2", "L0H3"]
    roles = induction_analysis.last_layer_roles(two).set_index("label")
    last_scores = scores[(scores.step == 60) & (scores.layer == 1)].set_index("label")
    assert roles.induction.to_numpy() == pytest.approx(last_scores.induction.to_numpy(), abs=1e-6)
    T = 2 * two.config.score_half
    assert roles.entropy_second_copy.between(0, math.log2(T)).all() and roles.first_token.between(0, 1).all()
    model = induction_analysis.load_model(two)                            # zeroing L1H2 by hand
    batch = sample(two.config.task(), two.config.eval_batch, step_generator(EVAL_SEED, two.config.seed))
    first, repeat = batch.target_masks()
    with torch.no_grad():
        intact = next_token_losses(model, batch.tokens)[repeat].mean().item()
        keep = torch.tensor([1.0, 1.0, 0.0, 1.0])[:, None]                 # (H, 1): head 2 silenced
        with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: z * keep)]):
            zeroed = next_token_losses(model, batch.tokens)[repeat].mean().item()
    assert roles.loc["L1H2", "repeat_rise"] == pytest.approx(zeroed - intact, abs=1e-6)
    subsets = induction_analysis.last_layer_zeroing(two).set_index("zeroed")
    assert len(subsets) == 16 and subsets.repeat_rise["none"] == 0 and subsets.n_zeroed.max() == 4
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: z * 0)]):
        silent = next_token_losses(model, batch.tokens)[repeat].mean().item()
    assert subsets.repeat_rise["L1H0+L1H1+L1H2+L1H3"] == pytest.approx(silent - intact, abs=1e-6)
    # a second call reads the store instead of training again
    before = two.path.stat().st_mtime
    assert results("induction", scale="smoke")["two_layer"].path.stat().st_mtime == before


def test_phase_change_on_a_synthetic_curve():
    import pandas as pd

    steps = list(range(0, 2001, 50))
    loss = [4.0 if s < 1000 else (1.0 if s > 1200 else 4.0 - 3.0 * (s - 1000) / 200) for s in steps]
    found = induction_analysis.phase_change(pd.DataFrame({"step": steps, "loss_repeat": loss}))
    assert found["fall"] == pytest.approx(3.0)
    assert 1000 <= found["start_step"] <= found["middle_step"] <= found["end_step"] <= 1250
    assert found["middle_step"] == pytest.approx(1100, abs=60)


def test_the_same_stored_model_is_rebuilt(tmp_store):
    entry = results("induction", scale="smoke")["two_layer"]
    model = induction_analysis.load_model(entry)
    state = entry.checkpoint("step_000060")
    assert torch.equal(model.state_dict()["embed.weight"], state["embed.weight"])


def test_overrides_are_typed_and_unknown_keys_named():
    config = get_experiment("induction").configs("smoke")["two_layer"]
    changed = with_overrides(config, {"steps": "10", "lr": "3e-4"})
    assert changed.steps == 10 and changed.lr == 3e-4
    with pytest.raises(ValueError, match="'nope'.*valid choices: batch_size"):
        with_overrides(config, {"nope": "1"})
    with pytest.raises(ValueError, match="'steps' needs a value like 60, got 'many'"):
        with_overrides(config, {"steps": "many"})


@pytest.mark.parametrize("args, message", [
    (["run", "nope"], "unknown experiment 'nope'; valid choices: activation_patching, adam_beta2, adam_short_memory, adam_step_anatomy, attention_atlas, attention_depth"),
    (["run", "induction", "--scale", "huge"], "unknown scale 'huge' for experiment 'induction'; valid choices: cpu, smoke"),
    (["run", "induction", "--config", "three"], "unknown config 'three'"),
    (["run", "induction", "--set", "stepz=3"], "unknown config key 'stepz'"),
    (["run", "induction", "--set", "steps"], "--set needs KEY=VALUE"),
])
def test_cli_bad_input_is_one_clear_line(args, message, capsys, tmp_store):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_lab_list_and_status(capsys, tmp_store):
    assert main(["list"]) == 0
    assert "induction" in capsys.readouterr().out
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "lab run induction --scale cpu" in out


def test_killed_run_leaves_no_entry_and_resumes_to_the_same_result(tmp_path):
    """SIGKILL a real `lab run` after its first resume save; the store holds nothing; a rerun completes and its
    weights equal those of an uninterrupted run."""
    env = {**os.environ, "LAB_RUNS_DIR": str(tmp_path / "killed"), "PYTHONUNBUFFERED": "1"}
    env.pop("LAB_STORE_READONLY", None)
    args = ["run", "induction", "--scale", "smoke", "--config", "two_layer", "--set", "steps=400", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "labpy.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    work = tmp_path / "killed" / ".work" / "induction"
    deadline = time.time() + 120
    while not list(work.glob("*/resume.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entries = [p for p in (tmp_path / "killed" / "induction").glob("*") if not p.name.startswith(".")]
    assert entries == [], "a killed run left a store entry"
    resumed = _lab(*args, env=env)
    assert resumed.returncode == 0, resumed.stderr
    env_clean = {**env, "LAB_RUNS_DIR": str(tmp_path / "clean")}
    assert _lab(*args, env=env_clean).returncode == 0
    from labpy.store import RunStore
    (a,) = RunStore(tmp_path / "killed").entries("induction")
    (b,) = RunStore(tmp_path / "clean").entries("induction")
    assert a.key == b.key
    wa, wb = a.checkpoint("step_000400"), b.checkpoint("step_000400")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.table("steps").loss.tolist() == b.table("steps").loss.tolist()
    assert not (tmp_path / "killed" / ".work" / "induction" / a.key).exists(), "resume state left behind"
    assert a.provenance["resumed"] is True and b.provenance["resumed"] is False


def test_benchmarks_smoke_measures_ratios(tmp_store):
    entry = results("benchmarks", scale="smoke")["ratios"]
    summary = entry.summary
    assert 0.2 < summary["loop_throughput_ratio"] < 5 and 0.2 < summary["capture_time_ratio"] < 10
    loops = entry.table("training_loops")
    assert set(loops.loop) == {"bare PyTorch", "labpy.train"} and len(loops) == 4


def test_provenance_checks_the_code_a_run_uses_and_only_that():
    from labpy.experiments.registry import get_experiment
    from labpy.provenance import code_files
    names = {f"{f.parent.name}/{f.name}" for f in code_files(get_experiment("induction").run)}
    assert {"experiments/induction.py", "labpy/train.py", "models/toy.py", "labpy/store.py"} <= names
    assert "experiments/wind_tunnels.py" not in names and "experiments/benchmarks.py" not in names
    # the page's analysis is not code the run uses: editing it does not mark stored runs dirty
    assert "experiments/induction_analysis.py" not in names


def test_corrupt_resume_state_is_named_and_force_starts_from_scratch(tmp_store, capsys):
    """A real garbage resume.pt: the run stops with one line naming the file; `--force` ignores it."""
    from labpy.cli import main

    experiment = get_experiment("induction")
    config = experiment.configs("smoke")["two_layer"]
    work = tmp_store.work_dir("induction", experiment.key(config, "two_layer"))
    work.mkdir(parents=True)
    (work / "resume.pt").write_bytes(b"\x80\x04garbage, not a pickle")
    args = ["run", "induction", "--scale", "smoke", "--config", "two_layer", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resume.pt is corrupt or unreadable" in err and "Traceback" not in err
    assert main([*args, "--force"]) == 0
    assert tmp_store.has("induction", experiment.key(config, "two_layer"))


def test_an_experiment_is_found_by_its_own_module_or_by_loading_them_all(monkeypatch):
    """Looking an experiment up imports the module of its name alone when there is one; an experiment registered
    elsewhere (lr_embed_scale_single lives in lr_embed_scale) is still found, and a name no module registers is
    named. Two modules registering one name is an error, not a silent overwrite."""
    from labpy.errors import UnknownChoiceError
    from labpy.experiments import registry

    monkeypatch.setattr(registry, "_REGISTERED_BY", dict(registry._REGISTERED_BY))
    assert get_experiment("lr_embed_scale_single").name == "lr_embed_scale_single"
    assert registry._REGISTERED_BY["lr_embed_scale_single"] == "labpy.experiments.lr_embed_scale"
    with pytest.raises(UnknownChoiceError, match="no_such_experiment"):
        get_experiment("no_such_experiment")
    induction = get_experiment("induction")
    with pytest.raises(ValueError, match="by labpy.experiments.induction and again by test_experiments_cli"):
        registry.register(induction)                      # from this test module
    assert registry._REGISTERED_BY["induction"] == "labpy.experiments.induction"
    for module in ("__main__", "labpy.experiments.induction"):   # `python -m` registers as __main__, then the
        exec("register(experiment)",                               # module's own import registers it again
             {"__name__": module, "register": registry.register, "experiment": induction})
    assert registry._REGISTERED_BY["induction"] == "labpy.experiments.induction"
    assert get_experiment("induction") is induction
