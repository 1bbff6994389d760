"""Building zoos end to end: determinism, resume after a kill, worker processes,
torchrun shards, merging; and reading the result back (filters, splits, streaming,
stacked tensors, parameter graphs)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import zoo
from zoo.store import ZooDir, ZooError

ROOT = Path(__file__).resolve().parents[1]
RECIPE, N, STEPS = "digits_cnn", 6, [0, 1, 3]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return env


def start_and_kill(cmd, out):
    """Run a build command, SIGKILL it as soon as its first network is on disk, and
    return the finished job files."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    jobs = Path(out) / "jobs"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if jobs.exists() and any(p.suffix == ".safetensors" for p in jobs.iterdir()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ZooDir(out).job_files()


def zoo_content(path):
    """Everything that defines a zoo: manifest lines and every tensor's bytes."""
    manifest = (Path(path) / "manifest.jsonl").read_text().splitlines()
    tensors = {}
    for shard in sorted((Path(path) / "shards").glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as h:
            for k in h.keys():
                tensors[k] = h.get_tensor(k)
    return manifest, tensors


def assert_same_zoo(a, b):
    ma, ta = zoo_content(a)
    mb, tb = zoo_content(b)
    assert ma == mb
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "zoo"
    summary = zoo.build(RECIPE, N, out, seed=0, options={"steps": STEPS}, progress=False)
    assert summary["trained"] == N and summary["packed"]["packed_jobs"] == N
    return out


def test_recipe_jobs_are_deterministic_and_prefix_stable():
    r = zoo.get_recipe("digits_cnn")
    a = r.jobs(8, seed=1)
    assert a == r.jobs(8, seed=1)
    assert r.jobs(5, seed=1) == a[:5]  # extending n keeps the first jobs
    assert r.jobs(8, seed=2) != a
    hps = [j.hparams for j in a]
    assert len({h["optimizer"] for h in hps}) > 1 and len({round(h["lr"], 8) for h in hps}) == 8
    fixed = r.jobs(3, seed=1, sample=False)
    assert all(j.hparams == fixed[0].hparams for j in fixed) and len({j.seed for j in fixed}) == 3
    with pytest.raises(TypeError, match="no option"):
        r.jobs(2, seed=0, nope=1)


def test_train_job_is_bitwise_reproducible():
    job = zoo.get_recipe("mnist1d_mlp").jobs(1, seed=0, steps=[0, 1])[0]
    a, b = zoo.train_job(job), zoo.train_job(job)
    assert a.metrics == b.metrics
    for sa, sb in zip(a.state_dicts, b.state_dicts):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.state_dicts[0]["layers.0.weight"], a.state_dicts[1]["layers.0.weight"])


def test_tiny_zoo_end_to_end(reference):
    z = zoo.Zoo.open(reference)
    assert len(z) == N * len(STEPS) and z.steps == STEPS and len(z.jobs()) == N
    assert zoo.verify(reference).ok
    # records carry architecture, hyperparameters and metrics
    rec = z.record(0)
    assert rec["arch"] == "small_cnn" and rec["dataset"] == "digits"
    assert {"optimizer", "lr", "weight_decay", "init", "train_fraction"} <= set(rec["hparams"])
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(rec["metrics"])
    # trained networks changed and were evaluated
    z0, z3 = z.where(step=0), z.where(step=3)
    assert len(z0) == len(z3) == N
    assert not torch.equal(z0[0]["fc.weight"], z3[0]["fc.weight"])
    # filters
    last = z.where(step="last")
    assert last.column("step") == [3] * N
    accs = last.column("test_acc")
    lo = sorted(accs)[N // 2]
    good = last.where(test_acc=(lo, 1.0))
    assert len(good) == sum(a >= lo for a in accs) and all(a >= lo for a in good.column("test_acc"))
    adam = z.where(optimizer="adam")
    assert all(r["hparams"]["optimizer"] == "adam" for r in adam.records)
    assert len(z.where(lambda r: r["index"] < 2)) == 2 * len(STEPS)
    with pytest.raises(ValueError, match="has a field 'nonexistent_field'"):
        z.where(nonexistent_field=1)   # a filter that matches nothing says why
    # seeded splits keep each network's checkpoints together
    a, b = z.split([0.5, 0.5], seed=0)
    assert len(a) + len(b) == len(z) and not set(a.jobs()) & set(b.jobs())
    assert [r["id"] for r in a.records] == [r["id"] for r in z.split([0.5, 0.5], seed=0)[0].records]
    assert a.jobs() != z.split([0.5, 0.5], seed=1)[0].jobs() or \
        b.jobs() != z.split([0.5, 0.5], seed=1)[1].jobs()
    # streaming into state dicts that load into the architecture
    sd = z[4]
    m = zoo.create(z.record(4)["arch"], **z.record(4)["arch_kwargs"])
    m.load_state_dict(sd)
    # the stored test accuracy is the accuracy of the stored weights
    data = zoo.load_dataset("digits")
    i = next(i for i, r in enumerate(z.records) if r["step"] == 3)
    model = z.model(i)
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert abs(acc - z.record(i)["metrics"]["test_acc"]) < 1e-6
    # stacked tensors equal the individual state dicts
    st = last.stacked()
    assert st["convs.0.weight"].shape == (N, 16, 1, 3, 3)
    for j in range(N):
        assert all(torch.equal(st[k][j], last[j][k]) for k in st)
    # a DataLoader over the Dataset collates state dicts (handles are not pickled)
    loader = torch.utils.data.DataLoader(last, batch_size=3)
    batch = next(iter(loader))
    assert torch.equal(batch["fc.bias"], st["fc.bias"][:3])
    import pickle
    clone = pickle.loads(pickle.dumps(last))
    assert torch.equal(clone[1]["fc.weight"], last[1]["fc.weight"])
    # batches with targets
    (b0, y0), = list(last.batches(N, target="test_acc"))
    assert torch.equal(b0["fc.bias"], st["fc.bias"]) and y0.tolist() == pytest.approx(accs)


def test_graphs_via_weightspace(reference):
    metanet = pytest.importorskip("metanet", reason="metanet.WeightSpace not importable yet")
    if not hasattr(metanet, "WeightSpace"):
        pytest.skip("metanet.WeightSpace not importable yet")
    z = zoo.Zoo.open(reference).where(step="last")
    batch = z.graphs(range(4))
    assert batch.num_graphs == 4
    st = z.stacked(range(4))
    ws = z.weight_space(0)
    back = ws.state_dicts(batch)
    # the records mix activations (relu/tanh): graphs come back in the order asked for
    for k in st:
        assert torch.equal(back[k], st[k]), k
    g = z.graph(1)
    assert all(torch.equal(z.weight_space(1).state_dict(g)[k], z[1][k]) for k in st)


def test_killed_build_resumes_to_the_same_zoo(reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "zoo", "build", "--recipe", RECIPE, "--n", str(N), "--out", str(out),
           "--epochs", ",".join(map(str, STEPS)), "--quiet"]
    done = start_and_kill(cmd, out)
    jobs = out / "jobs"
    assert 1 <= len(done) < N, "the build was not interrupted mid-way"
    assert not (out / "manifest.jsonl").exists()
    # a write in flight at kill time leaves at most a hidden temp file; add one, plus a
    # damaged job file (as a non-atomic copy would leave): both must be ignored/redone
    (jobs / ".000005.safetensors.abc.tmp").write_bytes(b"partial")
    bad = jobs / f"{N - 1:06d}.safetensors"
    bad.write_bytes(b"\x00" * 10)
    summary = zoo.build(RECIPE, N, out, seed=0, options={"steps": STEPS}, progress=False)
    assert summary["skipped"] == len(done) and summary["trained"] == N - len(done)
    assert_same_zoo(out, reference)
    # a finished zoo resumes to a no-op; other arguments are refused
    again = zoo.build(RECIPE, N, out, seed=0, options={"steps": STEPS}, progress=False)
    assert again["trained"] == 0
    with pytest.raises(ZooError, match="built with"):
        zoo.build(RECIPE, N, out, seed=1, options={"steps": STEPS}, progress=False)


def test_two_workers_equal_one(reference, tmp_path):
    out = tmp_path / "workers"
    summary = zoo.build(RECIPE, N, out, seed=0, options={"steps": STEPS}, workers=2, progress=False)
    assert summary["trained"] == N
    assert_same_zoo(out, reference)


def test_torchrun_two_ranks_equal_one_process(reference, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "zoo", "build", "--recipe", RECIPE, "--networks", str(N), "--out", str(out),
           "--epochs", ",".join(map(str, STEPS)), "--quiet"]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 1/2: 3 trained" in r.stdout and "rank 0/2: 3 trained" in r.stdout
    assert_same_zoo(out, reference)
    assert json.loads((out / "zoo.json").read_text()) == json.loads((reference / "zoo.json").read_text())


def test_rank_shards_in_separate_folders_merge_to_the_same_zoo(reference, tmp_path):
    parts = []
    for rank in range(2):
        p = tmp_path / f"part{rank}"
        s = zoo.build(RECIPE, N, p, seed=0, options={"steps": STEPS}, rank=rank, world_size=2,
                      progress=False)
        assert s["assigned"] == N // 2 and s["packed"] is None
        parts.append(p)
    zoo.pack(parts[1])  # merge takes packed and unpacked sources alike
    out = tmp_path / "merged"
    zoo.merge(parts, out)
    assert_same_zoo(out, reference)
    with pytest.raises(ZooError, match="built with"):
        other = tmp_path / "other"
        zoo.build(RECIPE, 2, other, seed=5, options={"steps": STEPS}, progress=False)
        zoo.merge([parts[0], other], tmp_path / "bad")


def test_inr_zoo_one_siren_per_image_with_views(tmp_path):
    out = tmp_path / "inr"
    zoo.build("digits_siren", 6, out, seed=0, options={"steps": [0, 30], "views": 2}, progress=False)
    z = zoo.Zoo.open(out)
    last = z.where(step="last")
    images = last.column("image")
    assert images[0::2] == images[1::2] and len(set(images)) == 3  # 2 views per image
    digits = zoo.load_dataset("digits")
    all_labels = torch.cat([digits.y_train, digits.y_test])
    assert last.column("label") == [int(all_labels[i]) for i in images]
    # the two views of an image are different networks
    assert not torch.equal(last[0]["layers.0.weight"], last[1]["layers.0.weight"])
    # fitting reduced the error, and the stored INR reproduces its image that well
    first = z.where(step=0)
    assert all(a < b for a, b in zip(last.column("mse"), first.column("mse")))
    from zoo.train import image_grid
    model = last.model(0)
    size = last.record(0)["data_kwargs"]["resize"]     # the recipe fits resampled digits
    img = zoo.load_images("digits", resize=size)[0][images[0]]
    with torch.no_grad():
        mse = torch.mean((model(image_grid(size, size)).reshape(size, size) - img[0]) ** 2).item()
    assert abs(mse - last.record(0)["metrics"]["mse"]) < 1e-6
    # splitting by image keeps the views of an image together
    a, b = last.split([0.5, 0.5], seed=0, by="image")
    assert not set(a.column("image")) & set(b.column("image"))


def test_mixed_recipe_builds_diverse_architectures(tmp_path):
    out = tmp_path / "mixed"
    zoo.build("mixed", 3, out, seed=0, options={"steps": [0, 1]}, progress=False)
    z = zoo.Zoo.open(out)
    assert len(z.architectures()) == 3
    assert zoo.verify(out).ok
    with pytest.raises(ZooError, match="same parameter names and shapes"):
        z.stacked()
    one = z.where(index=0)
    assert one.stacked()[next(iter(one[0]))].shape[0] == 2


def test_worker_failure_names_the_job_and_keeps_finished_work(tmp_path):
    jobs = zoo.get_recipe("digits_mlp").jobs(3, seed=0, steps=[0])
    bad = zoo.Job(**{**jobs[2].to_dict(), "hparams": {**jobs[2].hparams, "optimizer": "nope"}})
    results = []
    with pytest.raises(RuntimeError, match="job 000002 .*unknown optimizer 'nope'"):
        for r in zoo.ProcessExecutor(workers=1, max_in_flight=1).map([jobs[0], jobs[1], bad]):
            results.append(r)
    assert [r.job.id for r in results] == ["000000", "000001"]
    assert results[0].metrics == zoo.train_job(jobs[0]).metrics
