"""The batched zoo executor: stacked models equal single ones, a network trained in a
batch equals the same job trained alone, builds resume after a kill, the CLI picks the
executor."""
import logging
import sys

import pytest
import torch

import zoo
from zoo.batched import SINGLETON, BatchedExecutor, plan_batches, train_batch
from zoo.build import ProcessExecutor, SequentialExecutor, make_executor
from zoo.cli import main
from zoo.stacked import (DropCalls, StackedOptimizer, activation_module, attach_keyed_dropout,
                         dropout_params, mix32, network_keys, split_arch_kwargs, stacked_arch)

from test_zoo_build import assert_same_zoo, start_and_kill

DIGITS_CNN = dict(in_channels=1, padding=1, input_size=8)


def _rel(a: dict, b: dict) -> float:
    """Relative error of a network's whole weight vector: ||a - b|| / ||a||."""
    va = torch.cat([a[k].flatten() for k in a])
    vb = torch.cat([b[k].flatten() for k in a])
    return ((va - vb).norm() / va.norm()).item()


# ------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("arch,kwargs,data,acts", [
    ("small_cnn", DIGITS_CNN, "digits", ["relu", "tanh", "relu"]),
    ("conv1d", dict(in_channels=1, input_length=40), "mnist1d", ["tanh", "relu"]),
    ("mlp", dict(in_features=[1, 8, 8], hidden=[32, 32]), "digits", ["gelu", "silu", "relu"]),
    ("cnn", dict(in_channels=1, channels=[8, 12], kernel_size=[3, 5], stride=[1, 2], norm="group",
                 pool="max", input_size=8), "digits", ["elu", "tanh"]),
    ("cnn", dict(in_channels=1, channels=[8, 12], kernel_size=[5, 3], stride=[2, 1], norm="layer",
                 ndim=1, input_size=40), "mnist1d", ["sigmoid", "tanh"]),
])
def test_stacked_forward_equals_the_modules(arch, kwargs, data, acts):
    """Eval and training mode (keyed dropout), networks with different activations and
    dropout rates in one stacked model."""
    x = zoo.load_dataset(data).x_train[:40]
    kws = [dict(kwargs, activation=a, dropout=0.1 + 0.2 * i) for i, a in enumerate(acts)]
    A = stacked_arch(arch, split_arch_kwargs(arch, kws[0])[0])
    models = []
    for i, kw in enumerate(kws):
        torch.manual_seed(i)
        models.append(zoo.create(arch, **kw))
    flat = torch.stack([A.flatten(dict(m.named_parameters())) for m in models])
    runs = [(activation_module(a), i, i + 1) for i, a in enumerate(acts)]
    xs = A.gather(A.prepare_data(x), torch.arange(len(x)).repeat(len(models), 1))
    seeds = [11, 22, 33][:len(models)]
    thr, scale = dropout_params([kw["dropout"] for kw in kws])
    with torch.no_grad():
        ev = A.forward(A.views(flat), xs, runs)
        tr = A.forward(A.views(flat), xs, runs, DropCalls(network_keys(seeds), thr, scale, 0))
        ref_ev = torch.stack([m.eval()(x) for m in models])
        for m, s in zip(models, seeds):
            attach_keyed_dropout(m, s)
        ref_tr = torch.stack([m.train()(x) for m in models])
    torch.testing.assert_close(ev, ref_ev, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr, ref_tr, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tr, ev)  # dropout did something


def test_unsupported_architectures_say_why():
    with pytest.raises(zoo.stacked.Unsupported, match="running statistics"):
        stacked_arch("cnn", dict(in_channels=1, channels=[8], norm="batch"))
    with pytest.raises(zoo.stacked.Unsupported, match="no stacked form"):
        stacked_arch("tiny_resnet", dict(in_channels=1))


def test_stacked_optimizer_matches_torch_optim_and_rows_are_independent():
    hps = [dict(optimizer="adam", lr=0.01, weight_decay=1e-3),
           dict(optimizer="adamw", lr=0.01, weight_decay=1e-2),
           dict(optimizer="sgd", lr=0.05, weight_decay=1e-4, momentum=0.9),
           dict(optimizer="sgd", lr=0.05, weight_decay=1e-4),
           dict(optimizer="rmsprop", lr=0.003, weight_decay=1e-4),
           dict(optimizer="rmsprop", lr=0.003, weight_decay=1e-4, momentum=0.5)]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(hps), 300, generator=g)
    grads = [torch.randn(len(hps), 300, generator=g) for _ in range(20)]
    flat = x0.clone()
    opt = StackedOptimizer(hps, 300)
    for gr in grads:
        opt.step(flat, gr.clone(), [h["lr"] for h in hps])
    for i, hp in enumerate(hps):
        p = torch.nn.Parameter(x0[i].clone())
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop}[hp["optimizer"]]
        kw = {k: v for k, v in hp.items() if k != "optimizer"}
        ref = cls([p], **kw)
        for gr in grads:
            p.grad = gr[i].clone()
            ref.step()
        torch.testing.assert_close(flat[i], p.detach(), rtol=1e-6, atol=1e-6)
        alone = x0[i:i + 1].clone()
        one = StackedOptimizer([hp], 300)
        for gr in grads:
            one.step(alone, gr[i:i + 1].clone(), [hp["lr"]])
        assert torch.equal(alone[0], flat[i])  # a row does not see the others


def test_keyed_dropout_hash_is_exact_int32_arithmetic():
    # vectorized and scalar kernels wrap the same way: equal to a Python reference
    x = (torch.arange(-500, 500, dtype=torch.int32) * 7919 + 123)

    def ref(v):
        v &= 0xFFFFFFFF
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        v ^= v >> 16
        return v - (1 << 32) if v >= 1 << 31 else v

    full = mix32(x)
    assert full.tolist() == [ref(int(v)) for v in x]
    assert all(torch.equal(mix32(x[i:i + 1]), full[i:i + 1]) for i in range(0, 1000, 97))


# ------------------------------------------------------------ batch versus alone
@pytest.mark.parametrize("recipe,n,steps", [("digits_cnn", 6, [0, 1]), ("digits_mlp", 6, [0, 1, 2]),
                                            ("digits_siren", 6, [0, 50, 100])])
def test_network_in_a_batch_equals_the_network_trained_alone(recipe, n, steps):
    """Sampled jobs (mixed optimizers, activations, dropout rates, learning rates,
    initializations, training subsets) in one batch, against ``train_job``."""
    jobs = zoo.get_recipe(recipe).jobs(n, seed=0, steps=steps)
    batched = {r.job.id: r for r in train_batch(jobs)}
    assert sorted(batched) == [j.id for j in jobs]
    for job in jobs:
        alone, b = zoo.train_job(job), batched[job.id]
        assert b.steps == alone.steps == steps and b.diverged_at == alone.diverged_at
        assert b.record()["job"] == alone.record()["job"]
        for sa, sb in zip(alone.state_dicts, b.state_dicts):
            assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)
        assert _rel(alone.state_dicts[-1], b.state_dicts[-1]) < 1e-5, job.id
        assert _rel(alone.state_dicts[0], b.state_dicts[0]) == 0  # same initialization
        for ma, mb in zip(alone.metrics, b.metrics):
            assert ma.keys() == mb.keys()
            for k in ma:
                assert mb[k] == pytest.approx(ma[k], rel=1e-4, abs=1e-5), (job.id, k)


def test_batch_composition_does_not_change_a_network():
    """Bit for bit: a network alone in a batch, in half of it, or in all of it."""
    jobs = zoo.get_recipe("digits_cnn").jobs(6, seed=3, steps=[0, 1])
    full = {r.job.id: r for r in train_batch(jobs)}
    parts = list(train_batch(jobs[:1])) + list(train_batch(jobs[1::2])) + list(train_batch(jobs[2::2]))
    for r in parts:
        f = full[r.job.id]
        assert r.metrics == f.metrics and r.steps == f.steps
        assert all(torch.equal(a[k], b[k]) for a, b in zip(r.state_dicts, f.state_dicts) for k in a)


def test_a_diverging_network_stops_alone_and_leaves_the_others_untouched():
    jobs = zoo.get_recipe("digits_cnn").jobs(3, seed=0, steps=[0, 1, 2])
    bad = zoo.Job(**{**jobs[1].to_dict(), "hparams": {**jobs[1].hparams, "optimizer": "sgd",
                                                       "lr": 1e6, "momentum": 0.9}})
    res = {r.job.id: r for r in train_batch([jobs[0], bad, jobs[2]])}
    alone = zoo.train_job(bad)
    assert res[bad.id].diverged_at == alone.diverged_at == 1 and res[bad.id].steps == alone.steps == [0]
    ref = {r.job.id: r for r in train_batch([jobs[0], jobs[2]])}
    for jid, r in ref.items():
        assert res[jid].metrics == r.metrics and res[jid].diverged_at is None
        assert all(torch.equal(a[k], b[k]) for a, b in zip(res[jid].state_dicts, r.state_dicts) for k in a)


def test_planning_groups_by_architecture_and_falls_back_with_a_reason(caplog):
    cnn = zoo.get_recipe("digits_cnn").jobs(5, seed=0, steps=[0, 1])
    mlp = zoo.get_recipe("digits_mlp").jobs(3, seed=0, steps=[0, 1])
    mlp = [zoo.Job(**{**j.to_dict(), "index": 10 + j.index}) for j in mlp]
    bn = zoo.Job(index=20, recipe="x", arch="cnn", arch_kwargs=dict(in_channels=1, channels=[8],
                 norm="batch", input_size=8), task="classify", dataset="digits", hparams={},
                 seed=1, steps=[0, 1])
    batches, alone = plan_batches(cnn + mlp + [bn], max_batch=4)
    assert sorted(len(b) for b in batches) == [2, 3, 3]  # 5 CNNs -> 3 + 2; 3 MLPs
    assert all(len({j.arch for j in b}) == 1 for b in batches)
    # one batch holds several optimizers and activations (rows are sorted into runs)
    assert max(len({(j.hparams["optimizer"], j.arch_kwargs["activation"]) for j in b}) for b in batches) > 1
    assert [(j.index, "running statistics" in why) for j, why in alone] == [(20, True)]
    with caplog.at_level(logging.INFO, logger="zoo.build"):
        results = list(BatchedExecutor(max_batch=8).map([cnn[0], cnn[1], bn]))
    assert sorted(r.job.index for r in results) == [0, 1, 20]
    text = caplog.text
    assert "2 networks in 1 stacked batch" in text
    assert "000020" in text and "sequential" in text and "running statistics" in text
    assert [r for r in caplog.records if "sequential" in r.getMessage()][0].levelno == logging.WARNING


def test_only_network_of_its_kind_is_trained_alone_but_a_shrunk_group_stays_batched(caplog):
    cnn = zoo.get_recipe("digits_cnn").jobs(3, seed=0, steps=[0, 1])
    wide = zoo.Job(**{**cnn[2].to_dict(), "index": 7,
                      "arch_kwargs": {**cnn[2].arch_kwargs, "channels": 8}})
    batches, alone = plan_batches(cnn[:2] + [wide], max_batch=8)
    assert [sorted(j.index for j in b) for b in batches] == [[0, 1]]
    assert [(j.index, why) for j, why in alone] == [(7, SINGLETON)]
    # what remains of a larger group (a resumed build, a rank's share) stays batched, so
    # a network's result does not depend on how the build was split
    batches, alone = plan_batches([cnn[1], wide], max_batch=8, peers=cnn + [wide])
    assert [[j.index for j in b] for b in batches] == [[1]] and [j.index for j, _ in alone] == [7]
    # through the builder: the singleton is trained by train_job (same bits), logged as
    # information, not as a warning
    with caplog.at_level(logging.INFO, logger="zoo.build"):
        ex = BatchedExecutor()
        ex.prepare(cnn + [wide])
        res = {r.job.index: r for r in ex.map([cnn[0], wide])}
    ref = zoo.train_job(wide)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(res[7].state_dicts, ref.state_dicts) for k in a)
    assert res[7].metrics == ref.metrics
    assert sorted(res) == [0, 7]
    line = [r for r in caplog.records if "000007" in r.getMessage()]
    assert line and line[0].levelno == logging.INFO and "only network" in line[0].getMessage()


# ------------------------------------------------------------------------- builds
N, STEPS = 8, [0, 1, 3]


@pytest.fixture(scope="module")
def batched_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("bref") / "zoo"
    s = zoo.build("digits_cnn", N, out, seed=0, options={"steps": STEPS},
                  executor=make_executor("batched"), progress=False)
    assert s["trained"] == N
    return out


def test_killed_batched_build_resumes_to_the_same_zoo(batched_reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "zoo", "build", "--recipe", "digits_cnn", "--n", str(N),
           "--out", str(out), "--epochs", ",".join(map(str, STEPS)), "--executor", "batched", "--quiet"]
    done = start_and_kill(cmd, out)
    assert 1 <= len(done) < N, "the build was not interrupted mid-way"
    before = {p.name: p.stat().st_mtime_ns for p in done}
    summary = zoo.build("digits_cnn", N, out, seed=0, options={"steps": STEPS},
                        executor=make_executor("batched"), do_pack=False, progress=False)
    # finished networks are not retrained (their files are untouched)
    assert summary["skipped"] == len(done) and summary["trained"] == N - len(done)
    assert {p.name: p.stat().st_mtime_ns for p in done} == before
    zoo.pack(out)
    assert_same_zoo(out, batched_reference)


def test_batched_workers_and_the_sequential_builder(batched_reference, tmp_path):
    # two worker processes, each taking whole batches: the same zoo
    out = tmp_path / "w2"
    s = zoo.build("digits_cnn", N, out, seed=0, options={"steps": STEPS},
                  executor=make_executor("batched", workers=2), progress=False)
    assert s["trained"] == N
    assert_same_zoo(out, batched_reference)
    # the sequential builder: the same records, weights and metrics to float tolerance
    seq = tmp_path / "seq"
    zoo.build("digits_cnn", N, seq, seed=0, options={"steps": STEPS},
              executor=make_executor("sequential"), progress=False)
    a, b = zoo.Zoo.open(seq), zoo.Zoo.open(batched_reference)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("metrics", "shard", "prefix")}
    assert [strip(r) for r in a.records] == [strip(r) for r in b.records]
    for i in range(len(a)):
        if a.record(i)["step"] <= 1:  # (later, float noise grows in ill-conditioned networks)
            assert _rel(a[i], b[i]) < 1e-5, a.record(i)["id"]
            for k, v in a.record(i)["metrics"].items():
                assert b.record(i)["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5)


def test_cli_chooses_the_executor(tmp_path, capsys):
    made = []
    import importlib

    zb = importlib.import_module("zoo.build")

    orig = zb.make_executor

    def spy(name, workers=1, **kw):
        ex = orig(name, workers, **kw)
        made.append((name, workers, kw, ex))
        return ex

    zb.make_executor = spy
    try:
        for ex in ("sequential", "batched", "auto"):
            out = tmp_path / ex
            assert main(["build", "--recipe", "digits_mlp", "--n", "2", "--out", str(out), "--epochs", "0,1",
                         "--executor", ex, "--device", "cpu", "--quiet"]) == 0
            assert "2 trained" in capsys.readouterr().out
        assert main(["build", "--recipe", "digits_mlp", "--n", "2", "--out", str(tmp_path / "w"),
                     "--epochs", "0,1", "--executor", "sequential", "--workers", "2", "--quiet"]) == 0
    finally:
        zb.make_executor = orig
    kinds = [type(e).__name__ for *_, e in made]
    assert kinds == ["SequentialExecutor", "BatchedExecutor", "BatchedExecutor", "ProcessExecutor"]
    assert made[1][2]["device"] == "cpu" and made[1][3].device == "cpu"
    assert zoo.Zoo.open(tmp_path / "sequential").records[0]["hparams"] == \
        zoo.Zoo.open(tmp_path / "batched").records[0]["hparams"]
    assert isinstance(make_executor(), BatchedExecutor)  # the default
    assert isinstance(make_executor("sequential"), SequentialExecutor)
    assert isinstance(make_executor("process", 2), ProcessExecutor)
    assert main(["build", "--recipe", "digits_mlp", "--n", "1", "--out", str(tmp_path / "x"),
                 "--executor", "batched", "--device", "cuda", "--quiet"]) == (0 if torch.cuda.is_available() else 1)


def test_cli_batched_build_logs_its_plan_and_full_recipe_runs(tmp_path, capsys):
    """`metanet zoo build --recipe digits_cnn --n 8 --executor batched` with the recipe's
    own epochs (the command that builds the 1,000-network zoo, at n=8)."""
    out = tmp_path / "digits_cnn"
    assert main(["build", "--recipe", "digits_cnn", "--n", "8", "--out", str(out), "--executor", "batched"]) == 0
    cap = capsys.readouterr()
    assert "8 trained" in cap.out and "batched executor: 8 networks in 1 stacked batch" in cap.err
    z = zoo.Zoo.open(out)
    assert z.steps == zoo.get_recipe("digits_cnn").defaults["steps"] and len(z.jobs()) == 8
    assert zoo.verify(out).ok
    last = z.where(step="last")
    assert max(last.column("test_acc")) > 0.8  # some networks learned
