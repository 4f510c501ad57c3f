"""The lab language model: corpus, tokenizer, batches, n-gram references, loss, stored model, train.py statistics."""

import math

import pytest
import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from labpy.experiments.lab_lm import lab_lm_dir
from labpy.models.lab_lm import build_lab_lm, lab_lm_config, lm_loss, load_lab_lm, per_token_loss
from labpy.tasks.corpus import (encode, eval_windows, kinds_in_context, lm_batch_fn, ngram_cross_entropy,
                                ngram_entropy, pydoc_text, split_ids, train_tokenizer)
from labpy.train import TrainSpec, adam_moments, step_generator, train

TEXT = pydoc_text()[:60_000]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT, 400)


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    """One smoke-scale lab LM for the module, in a private writable store."""
    from labpy.experiments import results
    from labpy.store import READONLY_ENV

    mp = pytest.MonkeyPatch()
    mp.setenv("LAB_RUNS_DIR", str(tmp_path_factory.mktemp("store") / "runs"))
    mp.setenv("LAB_TRAIN_MISSING", "1")
    mp.delenv(READONLY_ENV, raising=False)
    entry = results("lab_lm", scale="smoke")["base"]
    yield entry
    mp.undo()


def test_tokenizer_round_trips_text(tokenizer):
    samples = [TEXT[:5000], "def f(x):\n\treturn x ** 2  # squared\n", "naïve café — 日本語 ∑ 😀", "   \n\n  ", "1234567"]
    for text in samples:
        ids = encode(tokenizer, text)
        assert ids.dtype == torch.long and ids.dim() == 1
        assert tokenizer.decode(ids.tolist()) == text
    assert len(tokenizer) == 400
    assert len(encode(tokenizer, TEXT)) < len(TEXT) / 1.5   # even 143 merges compress prose (bytes: 1 per char)


def test_byte_level_never_unknown(tokenizer):
    ids = encode(tokenizer, "\x00\x7f\u0370 unseen ⟨bytes⟩")
    assert tokenizer.decode(ids.tolist()) == "\x00\x7f\u0370 unseen ⟨bytes⟩"


def test_split_interleaves_blocks():
    ids = torch.arange(10_500)
    train, val = split_ids(ids, 0.1, block=100)
    assert len(train) + len(val) == len(ids)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert val[:100].tolist() == list(range(900, 1000))          # the 10th block
    assert val[100:200].tolist() == list(range(1900, 2000))      # the 20th
    assert len(val) == 10 * 100                                  # 105 blocks -> blocks 9, 19, ..., 99
    with pytest.raises(ValueError, match="val_fraction must lie in"):
        split_ids(ids, 1.5)
    with pytest.raises(ValueError, match="too few"):
        split_ids(torch.arange(50), 0.1, block=100)


def test_batches_are_deterministic_windows():
    ids = torch.arange(5000)
    fn = lm_batch_fn(ids, batch_size=4, seq_len=16, seed=3)
    a, b = fn(7), lm_batch_fn(ids, 4, 16, 3)(7)
    assert a.shape == (4, 17) and torch.equal(a, b)
    assert not torch.equal(fn(7), fn(8))
    assert not torch.equal(fn(7), lm_batch_fn(ids, 4, 16, 4)(7))
    assert torch.equal(a - a[:, :1], torch.arange(17).expand(4, 17))   # each row a contiguous slice
    with pytest.raises(ValueError, match="lower seq_len"):
        lm_batch_fn(torch.arange(10), 2, 16, 0)


def test_eval_windows_cover_evenly_without_overlap():
    ids = torch.arange(1001)
    w = eval_windows(ids, 10)
    assert w.shape == (100, 11) and w[-1, -1] == 1000
    capped = eval_windows(ids, 10, max_tokens=30)
    assert capped[:, 0].tolist() == [0, 500, 990]


def test_ngram_entropies_by_hand():
    ids = torch.tensor([0, 1, 0, 1, 2])
    # unigram p = (2/5, 2/5, 1/5)
    assert ngram_entropy(ids, 1) == pytest.approx(-(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)))
    # bigrams (0,1) x2, (1,0), (1,2): after 0 always 1 (0 nats), after 1 a coin flip (ln 2), half the pairs each
    assert ngram_entropy(ids, 2) == pytest.approx(0.5 * math.log(2))
    # held-out [0, 1, 2] with add-1 smoothing, vocab 3: unigram counts (2,2,1) -> p = (3/8, 3/8, 2/8)
    held = torch.tensor([0, 1, 2])
    assert ngram_cross_entropy(ids, held, 1, 3, alpha=1.0) == pytest.approx(
        -(2 * math.log(3 / 8) + math.log(2 / 8)) / 3)
    # bigram: P(1|0) = (2+1)/(2+3), P(2|1) = (1+1)/(2+3)
    assert ngram_cross_entropy(ids, held, 2, 3, alpha=1.0) == pytest.approx(-(math.log(3 / 5) + math.log(2 / 5)) / 2)
    with pytest.raises(ValueError, match="order must be 1"):
        ngram_entropy(ids, 3)


def test_kinds_in_context(tokenizer):
    text = "Return the value.\nEach 42"
    ids = encode(tokenizer, text)
    pieces = [tokenizer.decode([i]) for i in ids.tolist()]
    kinds = dict(zip(pieces, kinds_in_context(ids, tokenizer)))
    assert kinds["4"] == kinds["2"] == "digits"            # Qwen2 pre-tokenisation: one digit per token
    assert kinds["."] == "punctuation"
    assert kinds[pieces[0]] == "word start"                 # 'Return' starts the text, no leading space
    assert all(kinds[p] == "word start" for p in pieces if p.startswith(" ") and p.strip().isalpha())


def test_lab_lm_loss_equals_hf_loss():
    config = lab_lm_config(300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=64)
    assert config.num_key_value_heads < config.num_attention_heads and config.tie_word_embeddings
    model = build_lab_lm(config, seed=0).eval()
    batch = torch.randint(0, 300, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf = model(input_ids=batch, labels=batch).loss           # HF shifts the labels itself
        ours = lm_loss(model, batch)
    assert ours.item() == pytest.approx(hf.item(), rel=1e-5)
    assert per_token_loss(model, batch).shape == (3, 16)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        lab_lm_config(300, num_attention_heads=4, num_key_value_heads=3)


def test_smoke_training_lowers_loss_and_stores_what_pages_need(smoke_store):
    entry = smoke_store
    evals = entry.table("evals")
    assert evals.val_loss.iloc[-1] < evals.val_loss.iloc[0] - 0.3
    assert evals.val_loss.iloc[0] == pytest.approx(math.log(512), abs=0.3)   # untrained: near uniform
    s = entry.summary
    assert s["unigram_entropy"] < s["uniform_loss"] and s["bigram_entropy"] < s["unigram_entropy"]
    assert s["bigram_heldout"] > s["bigram_entropy"]          # plug-in entropy flatters the bigram table
    assert {"steps", "evals", "param_stats", "token_stats", "tokens"} <= set(entry.table_names())
    assert entry.checkpoint_names() == ["final"]
    assert "lm_head.weight" not in entry.checkpoint("final")  # tied: stored once
    assert set(entry.table("token_stats").step) == {1, 30}
    assert entry.file("tokenizer.json").stat().st_size > 0
    assert {1, 5, 10, 20, 30} <= set(evals.step)


def test_lab_lm_dir_loads_with_identical_logits(smoke_store):
    path = lab_lm_dir("smoke")
    assert path == lab_lm_dir("smoke")                        # built once, then reused
    hf = Qwen2ForCausalLM.from_pretrained(path).eval()
    ours, tokenizer = load_lab_lm(smoke_store)
    auto = AutoTokenizer.from_pretrained(path)
    text = pydoc_text()[:3000]
    ids = encode(tokenizer, text)
    assert auto(text, add_special_tokens=False)["input_ids"] == ids.tolist()
    with torch.no_grad():
        a, b = hf(input_ids=ids[None, :64]).logits, ours(input_ids=ids[None, :64]).logits
    assert torch.equal(a, b)
    stored = smoke_store.checkpoint("final")["model.embed_tokens.weight"]
    assert torch.equal(hf.model.embed_tokens.weight, stored)


def test_lab_lm_dir_follows_new_weights_after_a_forced_rerun(smoke_store):
    """`lab run lab_lm --force` replaces the weights: the HF copy must be rebuilt, not silently reused."""
    from labpy.store import RunResult, RunStore

    old = lab_lm_dir("smoke")
    state = smoke_store.checkpoint("final")
    state["model.norm.weight"] = state["model.norm.weight"] * 2                        # different weights
    files = {name: smoke_store.file(name).read_bytes() for name in ("tokenizer.json",)}
    RunStore().put("lab_lm", smoke_store.key, dict(smoke_store.meta), RunResult(
        tables={n: smoke_store.table(n) for n in smoke_store.table_names()}, summary=smoke_store.summary,
        checkpoints={"final": state}, files=files), smoke_store.provenance)
    new = lab_lm_dir("smoke")
    assert new != old and not old.exists()
    reloaded = Qwen2ForCausalLM.from_pretrained(new)
    assert torch.equal(reloaded.model.norm.weight, state["model.norm.weight"].half().float())


def test_lab_lm_dir_read_only_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("LAB_STORE_READONLY", "1")
    with pytest.raises(LookupError, match="lab run lab_lm --scale cpu"):
        lab_lm_dir()


# ---- train.py's per-parameter and custom statistics ----

def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def batch_fn(step):
        x = torch.randn(16, 4, generator=step_generator(0, step))
        return x, x.sum(1, keepdim=True)

    return model, batch_fn, lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])


def test_effective_step_equals_the_actual_adam_update():
    """With no weight decay, lr * m_hat / (sqrt(v_hat) + eps) is exactly what AdamW subtracted."""
    model, batch_fn, loss_fn = _problem()
    seen = {}

    def stats_fn(ctx):
        p = ctx.model[0].weight
        m_hat, v_hat = adam_moments(ctx.optimizer, p)
        seen[ctx.step] = (ctx.lr * m_hat / (v_hat.sqrt() + 1e-8)).clone(), p.detach().clone()
        return [{"name": ctx.names[id(p)]}]

    spec = TrainSpec(steps=3, lr=1e-2, eval_every=1, grad_clip=None)
    log = train(model, batch_fn, loss_fn, spec, param_stats=True, stats_fn=stats_fn)
    step3, after3 = seen[3]
    _, after2 = seen[2]
    assert torch.allclose(after2 - step3, after3, atol=1e-7)
    assert log.custom_stats.to_dict("records")[0] == {"step": 1, "name": "0.weight"}
    first = log.param_stats[(log.param_stats.step == 1) & (log.param_stats.name == "0.weight")].iloc[0]
    assert first.snr == pytest.approx(1.0, abs=1e-3)        # step 1: m_hat = g, v_hat = g^2: a sign step
    assert first.step_mean == pytest.approx(1e-2, rel=1e-3) and first.update_rms == pytest.approx(1e-2, rel=1e-3)
    assert set(log.param_stats.name) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_measure_steps_and_stats_survive_a_resume(tmp_path):
    spec = TrainSpec(steps=40, lr=1e-2, eval_every=20, resume_every=10, measure_steps=(1, 3))
    model, batch_fn, loss_fn = _problem()
    reference = train(model, batch_fn, loss_fn, spec, param_stats=True)
    assert reference.evals.step.tolist() == [0, 1, 3, 20, 40]
    assert sorted(set(reference.param_stats.step)) == [1, 3, 20, 40]

    model, batch_fn, loss_fn = _problem()

    def dying(step):
        if step == 25:
            raise KeyboardInterrupt
        return batch_fn(step)

    with pytest.raises(KeyboardInterrupt):
        train(model, dying, loss_fn, spec, work_dir=tmp_path, param_stats=True)
    model, batch_fn, loss_fn = _problem()
    resumed = train(model, batch_fn, loss_fn, spec, work_dir=tmp_path, param_stats=True)
    assert resumed.param_stats.equals(reference.param_stats)


# ---- the learning-rate sweep ----

def test_sweep_smoke_shares_init_and_data_across_learning_rates(tmp_store):
    from labpy.experiments import lr_sweep_analysis, results

    runs = results("lr_sweep", scale="smoke")
    table = lr_sweep_analysis.per_run_table(runs)
    assert len(table) == 3 * 2 and table.final_val_loss.notna().all()
    # the first loss is computed before any update: equal across learning rates for the same seed
    first = table.groupby("seed").initial_loss.agg(["min", "max"])
    assert (first["max"] - first["min"]).max() < 1e-6
    assert table.groupby("seed").initial_loss.first().nunique() == 2          # ...and differs across seeds
    assert set(lr_sweep_analysis.curves_table(runs).step) == {5, 10}


def test_largest_spike_by_hand():
    import pandas as pd

    from labpy.experiments.lr_sweep_analysis import largest_spike

    curve = pd.DataFrame({"step": [5, 10, 15, 20, 25], "loss": [9.0, 4.0, 3.0, 4.5, 2.0]})
    assert largest_spike(curve, after_step=0) == pytest.approx(1.5)
    assert largest_spike(curve, after_step=15) == pytest.approx(2.5 - 2.5)   # from 4.5 down to 2: no rise


def test_sweep_measurements_find_the_cliff():
    import pandas as pd

    from labpy.experiments.lr_sweep_analysis import sweep_measurements

    lrs = [1e-4, 1e-3, 2e-3, 5e-3, 1e-2]
    loss = {1e-4: 5.0, 1e-3: 3.05, 2e-3: 3.0, 5e-3: 3.2, 1e-2: 4.6}
    rows = [{"lr": lr, "seed": s, "warmup": True, "final_val_loss": loss[lr] + 0.01 * s, "initial_loss": 7.0,
             "spike": 0.0, "nonfinite_at_step": float("nan")} for lr in lrs for s in range(2)]
    r = sweep_measurements(pd.DataFrame(rows))
    assert r["best_lr"] == 2e-3 and r["cliff"] == (5e-3, 1e-2) and r["diverge_lr"] == 1e-2
    assert r["basin_width"] == pytest.approx(2.0)                  # 1e-3 and 2e-3 within 0.1 nats
    assert r["max_seed_spread_stable"] == pytest.approx(0.01)


def test_nonfinite_step_reads_the_training_loops_error():
    from labpy.experiments.lr_sweep import nonfinite_step

    model, batch_fn, loss_fn = _problem()
    with pytest.raises(FloatingPointError) as err:
        train(model, batch_fn, lambda m, b: loss_fn(m, b) * float("nan"), TrainSpec(steps=5, lr=1e-2))
    assert nonfinite_step(err.value) == 1.0


def test_sweep_corpus_yardsticks_smoke(tmp_store):
    from labpy.experiments import results

    s = results("lr_sweep_corpus", scale="smoke")["reference"].summary
    assert s["uniform_loss"] == pytest.approx(math.log(300))
    assert s["bigram_entropy"] < s["unigram_entropy"] < s["uniform_loss"]
    assert s["unigram_heldout"] > s["unigram_entropy"] - 0.1 and s["bigram_heldout"] > s["bigram_entropy"]


def test_building_the_hf_copy_draws_no_progress_bar(smoke_store, tmp_path, capfd):
    """Pages build this copy inside a Jupyter kernel, where a tqdm bar becomes a widget that loads require.js
    from a CDN (the browser check caught it on a fresh machine)."""
    from labpy.models.lab_lm import hf_copy_dir

    hf_copy_dir(smoke_store, tmp_path)
    assert "Writing model shards" not in capfd.readouterr().err
