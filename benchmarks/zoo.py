"""Zoo benchmark: reference accuracies, build throughput, read speed.

    python benchmarks/zoo.py                 # full size (about 15 minutes on 2 cores)
    python benchmarks/zoo.py --small         # a quick check that everything runs

Measures
1. test accuracy of single networks trained with the recipes' reference
   hyperparameters (``sample=False``): the MNIST-1D paper's CNN and MLP on locally
   generated MNIST-1D (paper: CNN ~94%, MLP ~68%), and the Small CNN Zoo network on
   scikit-learn digits (target > 95%);
2. networks trained per minute by ``zoo.build``, sequential executor against batched
   executor (many networks as one stacked model), with 1 and with 2 worker processes,
   for the digits CNN, the MNIST-1D CNN and the digits SIREN (sampled hyperparameters,
   the recipes' own checkpoint steps); both builds of a configuration run back to back
   in this run, and the speedup is their ratio.  Also how far the two zoos agree
   (weights of the last checkpoint, metrics) — with a control for the digits CNN: the
   sequential build against itself with every initial weight perturbed by one ulp —
   how many matmul/convolution FLOPs per second each build does against one core's
   matmul rate, and the build times of the 1,000-network digits-CNN and SIREN zoos with
   the batched executor (``--device cuda`` runs the batched builds on a GPU);
3. read speed of a packed zoo of small-CNN checkpoints (weights are random: reading
   does not depend on them): raw ``safetensors.safe_open`` over every tensor, vs
   ``Zoo`` streaming state dicts, ``Zoo.stacked``, and ``Zoo.graphs`` (parameter graphs
   via metanet.WeightSpace, when importable).

Writes ``benchmarks/results/zoo.json`` and ``benchmarks/zoo.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# the repository root before this folder (on the path as the script's own): ``zoo`` is
# the package, not this file; ``build_zoos`` is still found here
sys.path.insert(0, str(HERE.parent))

import zoo  # noqa: E402
from zoo.store import ZooDir, pack  # noqa: E402
from zoo.train import Job, JobResult  # noqa: E402


def accuracy(recipe: str, seeds: int, epochs: int) -> dict:
    jobs = zoo.get_recipe(recipe).jobs(seeds, seed=0, sample=False, steps=[epochs])
    accs, secs = [], []
    for job in jobs:
        t = time.perf_counter()
        res = zoo.train_job(job)
        secs.append(time.perf_counter() - t)
        accs.append(res.metrics[-1]["test_acc"])
    return {"recipe": recipe, "arch": jobs[0].arch, "hparams": jobs[0].hparams, "epochs": epochs,
            "seeds": seeds, "test_acc": accs, "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.pstdev(accs), "seconds_per_network": statistics.mean(secs)}


# networks per throughput build: zoo scale, so that a build has several full batches
# per worker (at a few dozen networks one batch is all the work and a second worker idles)
THROUGHPUT_RECIPES = {"digits_cnn": 256, "mnist1d_cnn": 128, "digits_siren": 1000}
DEVICE = "cpu"   # the batched executor's device (--device)


def _build_timed(recipe: str, n: int, out: Path, executor: str, workers: int, steps) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    options = {"steps": steps} if steps else {}
    ex = zoo.make_executor(executor, workers, **({"device": DEVICE} if executor == "batched" else {}))
    t = time.perf_counter()
    s = zoo.build(recipe, n, out, seed=123, executor=ex, options=options, progress=False)
    return {"train_seconds": s["train_seconds"], "wall_seconds": time.perf_counter() - t,
            "networks_per_minute": 60 * n / s["train_seconds"]}


def matmul_peak(repeats: int = 20) -> float:
    """GFLOP/s of a 512 x 512 float32 matrix product on one thread (best of ``repeats``):
    what one core of this machine can do at best, the yardstick for the builds' rates."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(512, 512), torch.randn(512, 512)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return 2 * 512 ** 3 / best / 1e9
    finally:
        torch.set_num_threads(threads)


_PER_SAMPLE: dict = {}


def _per_sample_flops(job: Job, batch: int) -> tuple[float, float]:
    """(training, evaluation) matmul/convolution FLOPs per sample, counted by torch's
    FlopCounterMode on one step of ``batch`` samples (forward + backward; forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    key = (job.arch, json.dumps(job.arch_kwargs, sort_keys=True), job.task, batch)
    if key not in _PER_SAMPLE:
        model = zoo.create(job.arch, **job.arch_kwargs)
        if job.task == "inr":
            x = torch.zeros(batch, 2)
        else:
            x = model.example_input(batch)
        with FlopCounterMode(display=False) as fc:
            model(x).float().pow(2).mean().backward()
        train = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(x)
        _PER_SAMPLE[key] = (train / batch, fc.get_total_flops() / batch)
    return _PER_SAMPLE[key]


def training_flops(job: Job) -> float:
    """Matmul/convolution FLOPs of training ``job`` as both executors do: every step's
    forward and backward, and the forward passes of every checkpoint's evaluation
    (elementwise work — activations, dropout, optimizer — is not counted)."""
    from zoo.data import load_dataset, load_images

    steps = sorted({int(s) for s in job.steps})
    last = steps[-1] if steps else 0
    if job.task == "inr":
        images, _, _ = load_images(job.dataset, **job.data_kwargs)
        pixels = images[0].shape[1] * images[0].shape[2]
        tr, ev = _per_sample_flops(job, pixels)
        return pixels * (tr * last + ev * len(steps))
    data = load_dataset(job.dataset, **job.data_kwargs)
    m = max(1, int(round(float(job.hparams.get("train_fraction", 1.0)) * len(data.y_train))))
    tr, ev = _per_sample_flops(job, int(job.hparams.get("batch_size", 32)))
    return tr * m * last + ev * (m + len(data.y_test)) * len(steps)


def agreement(a: Path, b: Path) -> dict:
    """How far two zoos of the same jobs agree at their last checkpoint."""
    za, zb = zoo.Zoo.open(a).where(step="last"), zoo.Zoo.open(b).where(step="last")
    rel, metric_diff = [], {}
    for i in range(len(za)):
        sa, sb = za[i], zb[i]
        va = torch.cat([sa[k].flatten() for k in sa])
        vb = torch.cat([sb[k].flatten() for k in sa])
        rel.append(((va - vb).norm() / va.norm().clamp_min(1e-30)).item())
        for k, v in za.record(i)["metrics"].items():
            metric_diff.setdefault(k, []).append(abs(v - zb.record(i)["metrics"][k]))
    rel.sort()
    q = lambda f: rel[min(len(rel) - 1, int(f * len(rel)))]
    return {"networks": len(rel), "rel_weight_diff_median": q(0.5), "rel_weight_diff_p90": q(0.9),
            "rel_weight_diff_max": rel[-1], "frac_within_1e-5": sum(r < 1e-5 for r in rel) / len(rel),
            "frac_within_1e-3": sum(r < 1e-3 for r in rel) / len(rel),
            "metric_abs_diff_max": {k: max(v) for k, v in metric_diff.items()},
            "metric_abs_diff_mean": {k: sum(v) / len(v) for k, v in metric_diff.items()}}


def perturbed_sequential(recipe: str, n: int, out: Path, steps=None) -> None:
    """The sequential build again, every initial weight multiplied by (1 + 2^-23): a
    one-ulp perturbation, to show how sensitive each network's training is by itself."""
    import zoo.train as zt

    orig = zt.init_weights

    def init(model, scheme="default", std=0.05):
        orig(model, scheme, std)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 2 ** -23)

    zt.init_weights = init
    try:
        _build_timed(recipe, n, out, "sequential", 1, steps)
    finally:
        zt.init_weights = orig


def throughput(recipe: str, n: int, tmp: Path, steps=None, workers=(1, 2), control=False) -> list[dict]:
    """Sequential and batched builds of the same ``n`` jobs, back to back, per worker count."""
    out = []
    jobs = zoo.get_recipe(recipe).jobs(n, seed=123, **({"steps": steps} if steps else {}))
    flops = sum(training_flops(j) for j in jobs)
    for w in workers:
        seq = _build_timed(recipe, n, tmp / f"{recipe}_seq_w{w}", "sequential", w, steps)
        bat = _build_timed(recipe, n, tmp / f"{recipe}_bat_w{w}", "batched", w, steps)
        for b in (seq, bat):   # matmul/conv work done per second and per process
            b["gflops_per_worker"] = flops / b["train_seconds"] / w / 1e9
        row = {"recipe": recipe, "workers": w, "networks": n,
               "steps": steps or zoo.get_recipe(recipe).defaults["steps"],
               "sequential": seq, "batched": bat, "gflop_per_network": flops / n / 1e9,
               "speedup": seq["train_seconds"] / bat["train_seconds"]}
        if w == workers[0]:
            row["agreement"] = agreement(tmp / f"{recipe}_seq_w{w}", tmp / f"{recipe}_bat_w{w}")
            if control:
                perturbed_sequential(recipe, n, tmp / f"{recipe}_ulp", steps)
                row["agreement_control"] = agreement(tmp / f"{recipe}_seq_w{w}", tmp / f"{recipe}_ulp")
                shutil.rmtree(tmp / f"{recipe}_ulp", ignore_errors=True)
        out.append(row)
        print(f"build {recipe:12s} {w} worker(s), {n} networks: sequential "
              f"{seq['networks_per_minute']:7.1f}/min, batched {bat['networks_per_minute']:7.1f}/min, "
              f"speedup {row['speedup']:.2f}x", flush=True)
    for w in workers:
        shutil.rmtree(tmp / f"{recipe}_seq_w{w}", ignore_errors=True)
        shutil.rmtree(tmp / f"{recipe}_bat_w{w}", ignore_errors=True)
    return out


def synthetic_zoo(root: Path, networks: int, steps: list[int]) -> Path:
    """A packed zoo of random small-CNN checkpoints, written through the real store."""
    zd = ZooDir(root)
    zd.init({"recipe": "benchmark_random", "seed": 0, "n": networks, "options": {}})
    kw = dict(in_channels=1, padding=1, input_size=8)
    g = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in zoo.create("small_cnn", **kw).state_dict().items()}
    for i in range(networks):
        job = Job(index=i, recipe="benchmark_random", arch="small_cnn", arch_kwargs=kw,
                  task="classify", dataset="digits", hparams={}, seed=i, steps=steps)
        sds = [{k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in steps]
        metrics = [{"train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}] * len(steps)
        zd.write_job(JobResult(job, steps, sds, metrics))
    pack(root)
    return root


def read_speed(root: Path, graph_batch: int) -> dict:
    from safetensors import safe_open

    z = zoo.Zoo.open(root)
    n = len(z)
    shards = sorted((root / "shards").glob("*.safetensors"))
    out = {"checkpoints": n, "params_per_checkpoint": 4970,
           "shard_mib": sum(p.stat().st_size for p in shards) / 2 ** 20}

    t = time.perf_counter()
    total = 0
    for p in shards:
        with safe_open(str(p), framework="pt") as h:
            for k in h.keys():
                total += h.get_tensor(k).numel()
    dt = time.perf_counter() - t
    out["raw_safetensors_ckpt_per_s"] = n / dt

    z = zoo.Zoo.open(root)  # fresh handles
    t = time.perf_counter()
    for i in range(n):
        z[i]
    out["zoo_state_dicts_ckpt_per_s"] = n / (time.perf_counter() - t)

    z = zoo.Zoo.open(root)
    t = time.perf_counter()
    st = z.stacked()
    out["zoo_stacked_cold_ckpt_per_s"] = n / (time.perf_counter() - t)  # incl. header parsing
    del st
    t = time.perf_counter()
    st = z.stacked()
    out["zoo_stacked_ckpt_per_s"] = n / (time.perf_counter() - t)
    out["stacked_mib"] = sum(v.numel() * v.element_size() for v in st.values()) / 2 ** 20
    del st

    try:
        import metanet  # noqa: F401

        z.weight_space(0).graphs(z.stacked(range(2)))  # trace once, outside the timing
        t = time.perf_counter()
        nodes = 0
        for a in range(0, n, graph_batch):
            b = z.graphs(range(a, min(n, a + graph_batch)))
            nodes += int(b.num_nodes)
        out["zoo_graphs_ckpt_per_s"] = n / (time.perf_counter() - t)
        out["graph_batch"] = graph_batch
        # graph conversion alone, from already stacked tensors
        st = z.stacked(range(min(n, graph_batch)))
        ws = z.weight_space(0)
        t = time.perf_counter()
        ws.graphs(st)
        out["graphs_from_stacked_ckpt_per_s"] = len(st["fc.bias"]) / (time.perf_counter() - t)
    except Exception as e:  # metanet not ready: report, do not fail the benchmark
        out["graphs_error"] = f"{type(e).__name__}: {e}"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes: only checks that it runs")
    p.add_argument("--seeds", type=int)
    p.add_argument("--mnist1d-epochs", type=int)
    p.add_argument("--digits-epochs", type=int)
    p.add_argument("--build-n", type=int, help="networks per throughput build (all recipes)")
    p.add_argument("--read-networks", type=int, help="networks in the read-speed zoo (x4 checkpoints)")
    p.add_argument("--device", default="cpu",
                   help="device of the batched executor: cpu (default) or cuda (noted in the page)")
    p.add_argument("--out", default=str(HERE / "results" / "zoo.json"))
    p.add_argument("--markdown", default=str(HERE / "zoo.md"))
    args = p.parse_args(argv)
    small = args.small
    seeds = args.seeds or (1 if small else 3)
    m1d_epochs = args.mnist1d_epochs or (5 if small else 150)  # paper: 6000 steps of 100 = 150 epochs
    dig_epochs = args.digits_epochs or (5 if small else 30)
    build_n = {r: args.build_n or (6 if small else n) for r, n in THROUGHPUT_RECIPES.items()}
    build_steps = {"digits_cnn": [0, 1, 2], "mnist1d_cnn": [0, 1], "digits_siren": [0, 50]} if small else {}
    zoo_n = 16 if small else 1000
    global DEVICE
    DEVICE = args.device
    read_networks = args.read_networks or (50 if small else 2500)
    torch.set_num_threads(1)

    results = {"size": "small" if small else "full", "machine": {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "platform": platform.platform(), "batched_device": DEVICE,
        "gpu": torch.cuda.get_device_name() if DEVICE.startswith("cuda") else None}}
    tmp = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    try:
        t0 = time.perf_counter()
        results["accuracy"] = [accuracy("mnist1d_cnn", seeds, m1d_epochs),
                               accuracy("mnist1d_mlp", seeds, m1d_epochs),
                               accuracy("digits_cnn", seeds, dig_epochs)]
        for r in results["accuracy"]:
            print(f"{r['recipe']:12s} {r['epochs']:4d} epochs: test acc {r['test_acc_mean']:.4f} "
                  f"± {r['test_acc_std']:.4f} ({r['seconds_per_network']:.1f} s/network)", flush=True)
        peak = [matmul_peak()]
        results["throughput"] = [row for recipe in THROUGHPUT_RECIPES
                                 for row in throughput(recipe, build_n[recipe], tmp, build_steps.get(recipe),
                                                       control=recipe == "digits_cnn")]
        peak.append(matmul_peak())
        results["matmul_gflops_one_core"] = peak
        print(f"one core, 512x512 float32 matmul: {max(peak):.1f} GFLOP/s", flush=True)
        # the 1,000-network zoos with the batched executor (1 worker, the recipes' steps):
        # digits CNN built here; the SIREN throughput build above already has 1,000
        results["zoos_1000"] = []
        for recipe in ("digits_cnn", "digits_siren"):
            row = next((t for t in results["throughput"] if t["recipe"] == recipe and t["workers"] == 1
                        and t["networks"] == zoo_n), None)
            if row is None:
                b = _build_timed(recipe, zoo_n, tmp / "zoo1000", "batched", 1, build_steps.get(recipe))
                shutil.rmtree(tmp / "zoo1000", ignore_errors=True)
            else:
                b = row["batched"]
            seq = next(t for t in results["throughput"] if t["recipe"] == recipe and t["workers"] == 1)
            results["zoos_1000"].append({
                "recipe": recipe, "networks": zoo_n, "steps": seq["steps"], "batched_seconds": b["train_seconds"],
                "sequential_rate_networks_per_minute": seq["sequential"]["networks_per_minute"]})
            print(f"{recipe} batched, 1 worker, {zoo_n} networks: {b['train_seconds']:.0f} s", flush=True)
        root = synthetic_zoo(tmp / "read", read_networks, [0, 1, 5, 20])
        results["read"] = read_speed(root, graph_batch=256 if not small else 50)
        print(json.dumps(results["read"], indent=1), flush=True)
        results["total_seconds"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    Path(args.markdown).write_text(markdown(results))
    # keep the real-zoo builds (benchmarks/build_zoos.py) in the same page
    import build_zoos

    if build_zoos.RESULTS.exists():
        build_zoos.write_markdown(json.loads(build_zoos.RESULTS.read_text()), Path(args.markdown))
    print(f"wrote {out} and {args.markdown}")
    return 0


def markdown(r: dict) -> str:
    refs = {"mnist1d_cnn": "~94% (MNIST-1D paper, CNN)", "mnist1d_mlp": "~68% (MNIST-1D paper, MLP)",
            "digits_cnn": "> 95% (target)"}
    m = r["machine"]
    lines = ["# Zoo benchmark", "",
             f"Size: **{r['size']}** (`python benchmarks/zoo.py{' --small' if r['size'] == 'small' else ''}`). "
             f"Machine: {m['cpus']} CPUs, torch {m['torch']}, Python {m['python']}. "
             f"Total {r.get('total_seconds', 0):.0f} s.", "",
             "## Reference accuracy (single networks, reference hyperparameters)", "",
             "| recipe | architecture | epochs | seeds | test accuracy | reference | s/network |",
             "|---|---|---|---|---|---|---|"]
    for a in r["accuracy"]:
        lines.append(f"| {a['recipe']} | {a['arch']} | {a['epochs']} | {a['seeds']} | "
                     f"{100 * a['test_acc_mean']:.1f}% ± {100 * a['test_acc_std']:.1f} | "
                     f"{refs.get(a['recipe'], '')} | {a['seconds_per_network']:.1f} |")
    dev = m.get("batched_device", "cpu")
    where = f"on {m['gpu']} ({dev})" if m.get("gpu") else "on the CPU, one thread per worker process"
    peak = max(r.get("matmul_gflops_one_core") or [float("nan")])
    lines += ["", "## Build throughput: sequential vs batched executor", "",
              f"Networks trained per minute by `zoo.build` (sampled hyperparameters; the recipes' "
              f"checkpoint steps, which fix the training length); batched executor {where}. Both builds of a "
              f"row ran back to back in this run on the same jobs; the machine is shared, so single numbers "
              f"are noisy: the ratio is the measurement. Target: batched >= 5x sequential.", "",
              "| recipe | workers | networks | steps | sequential / min | batched / min | speedup | 5x target |",
              "|---|---|---|---|---|---|---|---|"]
    for t in r["throughput"]:
        lines.append(f"| {t['recipe']} | {t['workers']} | {t['networks']} | {t['steps']} | "
                     f"{t['sequential']['networks_per_minute']:.1f} | {t['batched']['networks_per_minute']:.1f} | "
                     f"{t['speedup']:.2f}x | {'met' if t['speedup'] >= 5 else 'not met'} |")
    if "gflops_per_worker" in r["throughput"][0]["sequential"]:
        lines += ["", f"How much of the machine each build uses: matrix-product and convolution FLOPs of the "
                      f"whole build (training steps forward and backward, checkpoint evaluations forward; "
                      f"counted with `torch.utils.flop_counter`; elementwise work not counted) per second and "
                      f"per worker process, against one core's float32 512x512 matmul rate measured in this run "
                      f"({peak:.0f} GFLOP/s). The last column is the rate a batched build would need for 5x, as "
                      f"a share of that peak.", "",
                  "| recipe | workers | GFLOP per network | sequential GFLOP/s | batched GFLOP/s | 5x needs |",
                  "|---|---|---|---|---|---|"]
        for t in r["throughput"]:
            sq, bt = t["sequential"]["gflops_per_worker"], t["batched"]["gflops_per_worker"]
            lines.append(f"| {t['recipe']} | {t['workers']} | {t['gflop_per_network']:.2f} | {sq:.1f} "
                         f"({100 * sq / peak:.0f}% of peak) | {bt:.1f} ({100 * bt / peak:.0f}%) | "
                         f"{5 * sq:.0f} ({100 * 5 * sq / peak:.0f}%) |")
        lines += ["", "Batching removes per-step overhead (Python, dispatch, kernels too small to use the "
                      "core), not arithmetic. A recipe whose sequential builds already do a good share of the "
                      "core's work cannot gain 5x: for it the last column asks for a share of peak that the "
                      "batched trainer's kernels (grouped convolutions, per-element activations, keyed dropout "
                      "and the optimizer over every activation and weight) do not reach on this CPU."]
    zs = r.get("zoos_1000")
    if zs:
        lines += ["", f"{zs[0]['networks']:,}-network zoos with the batched executor (1 worker, built in this "
                      f"run; the sequential time is the 1-worker sequential rate above applied to the same number "
                      f"of networks). Target for the 1,000-network digits CNN zoo: under 10 minutes.", "",
                  "| recipe | networks | steps | command | batched | sequential (from its rate) |",
                  "|---|---|---|---|---|---|"]
        for z in zs:
            cmd = f"`metanet zoo build --recipe {z['recipe']} --n {z['networks']} --executor batched`"
            lines.append(f"| {z['recipe']} | {z['networks']} | {z['steps']} | {cmd} | "
                         f"{z['batched_seconds']:.0f} s ({z['batched_seconds'] / 60:.1f} min) | "
                         f"{60 * z['networks'] / z['sequential_rate_networks_per_minute'] / 60:.1f} min |")
    lines += ["", "Agreement of the batched zoo with the sequential one (1 worker, last checkpoint; "
                  "relative error of each network's weight vector, and absolute metric differences):", "",
              "| recipe | networks | median | 90th pct | max | within 1e-5 | within 1e-3 | largest metric differences |",
              "|---|---|---|---|---|---|---|---|"]
    for t in r["throughput"]:
        for key, label in (("agreement", t["recipe"]),
                           ("agreement_control", f"{t['recipe']}: control, sequential vs sequential with "
                                                 f"init x (1 + 2^-23)")):
            a = t.get(key)
            if a:
                md = ", ".join(f"{k} {v:.2g}" for k, v in a["metric_abs_diff_max"].items())
                lines.append(f"| {label} | {a['networks']} | {a['rel_weight_diff_median']:.1e} | "
                             f"{a['rel_weight_diff_p90']:.1e} | {a['rel_weight_diff_max']:.1e} | "
                             f"{100 * a['frac_within_1e-5']:.0f}% | {100 * a['frac_within_1e-3']:.0f}% | {md} |")
    lines += ["", "Per step the two executors agree to ~1e-7 (float rounding of different kernels: grouped vs "
                  "single convolutions, batched vs single matmuls). Over a full training run, networks with "
                  "chaotic dynamics (mostly high learning rates with Adam/RMSprop) amplify any such difference "
                  "into a different trajectory: the control row shows the sequential builder itself does the "
                  "same under a one-ulp change of the initial weights. Batched builds are bit-for-bit "
                  "reproducible among themselves (any batch composition, workers, resume, torchrun shards)."]
    rd = r["read"]
    lines += ["", f"## Read speed ({rd['checkpoints']} small-CNN checkpoints, {rd['shard_mib']:.0f} MiB of shards)",
              "", "| path | checkpoints / s |", "|---|---|",
              f"| raw `safe_open` + `get_tensor` over every tensor | {rd['raw_safetensors_ckpt_per_s']:.0f} |",
              f"| `Zoo[i]` state dicts (streaming) | {rd['zoo_state_dicts_ckpt_per_s']:.0f} |",
              f"| `Zoo.stacked()`, first call (parses shard headers) | {rd['zoo_stacked_cold_ckpt_per_s']:.0f} |",
              f"| `Zoo.stacked()`, headers cached | {rd['zoo_stacked_ckpt_per_s']:.0f} |"]
    if "zoo_graphs_ckpt_per_s" in rd:
        lines.append(f"| `Zoo.graphs()` (batches of {rd['graph_batch']}, read + convert) | "
                     f"{rd['zoo_graphs_ckpt_per_s']:.0f} |")
        lines.append(f"| `WeightSpace.graphs` alone, from stacked tensors | "
                     f"{rd['graphs_from_stacked_ckpt_per_s']:.0f} |")
    else:
        lines.append(f"| `Zoo.graphs()` | not measured: {rd.get('graphs_error')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
