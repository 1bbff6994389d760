"""Metanetworks on zoos (named so as not to shadow the ``metanet`` package): conversion speed of shared-structure batches, accuracy
prediction (Kendall τ, R²), INR classification, training throughput and peak memory,
with the public ``nfn`` package (NFN-HNP / NFN-NP) as a baseline where it is installed.

    python benchmarks/metanetworks.py            # the full run (3 seeds)
    python benchmarks/metanetworks.py --quick    # a smoke run: small zoos, 1 seed, 1 epoch

Zoos are built with ``metanet zoo build`` when absent (zoos/digits_cnn: 1,000 digits
CNNs; zoos/digits_siren: 1,000 SIRENs of digits images; --quick builds small ones under
zoos/quick_*). Splits are fixed (split_seed 0, by network, or by image for INRs); seeds
vary the metanetwork's initialisation and data order. Writes
benchmarks/results/metanet.json and benchmarks/metanet.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metanet import WeightSpace  # noqa: E402
from metanet.graph import SharedBatch  # noqa: E402
from tasks.classify_inr import INRConfig  # noqa: E402
from tasks.classify_inr import run as run_inr  # noqa: E402
from tasks.predict_accuracy import AccuracyConfig, _regression_scores, fit, zoo_batches  # noqa: E402
from zoo.models import create  # noqa: E402

try:
    import nfn  # noqa: F401
    from nfn import layers as nfn_layers
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
    HAVE_NFN = True
except ImportError:
    HAVE_NFN = False


# ----------------------------------------------------------------------------- helpers
def ensure_zoo(recipe: str, n: int, quick: bool) -> Path:
    out = ROOT / "zoos" / (f"quick_{recipe}" if quick else recipe)
    if not (out / "manifest.jsonl").exists():
        cmd = ["metanet", "zoo", "build", "--recipe", recipe, "--n", str(n), "--out", str(out), "--quiet"]
        print("building:", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    return out


def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset the peak resident size (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mean_std(xs):
    xs = [x for x in xs if x == x]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def best_time(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ----------------------------------------------------------------------------- public NFN
class PublicNFN(nn.Module, PyTorchModelHubMixin):
    """The public ``nfn`` package's NFN-HNP / NFN-NP on a zoo architecture: weights and
    biases taken from the state dict in layer order (its convention), standardised per
    tensor, HNPLinear/NPLinear layers, invariant pooling, an MLP head."""

    def __init__(self, arch: str, arch_kwargs: dict, mode: str = "hnp", hidden: int = 32, layers: int = 3,
                 out_dim: int = 1):
        super().__init__()
        net = create(arch, **arch_kwargs)
        self.ws = WeightSpace.of(net, net.example_input())
        names = self.ws.weights
        self.w_names = [k for k in names if k.endswith("weight")]
        self.b_names = [k for k in names if k.endswith("bias")]
        feats = self._features({k: v.unsqueeze(0) for k, v in net.state_dict().items()})
        spec = network_spec_from_wsfeat(feats)
        Linear = nfn_layers.HNPLinear if mode == "hnp" else nfn_layers.NPLinear
        Pool = nfn_layers.HNPPool if mode == "hnp" else nfn_layers.NPPool
        mods, c = [], 1
        for _ in range(layers):
            mods += [Linear(spec, c, hidden), nfn_layers.TupleOp(nn.ReLU())]
            c = hidden
        self.body = nn.Sequential(*mods, Pool(spec), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(hidden * Pool.get_num_outs(spec), hidden), nn.ReLU(),
                                  nn.Linear(hidden, out_dim))
        self.register_buffer("mean", torch.zeros(len(names)))
        self.register_buffer("std", torch.ones(len(names)))

    def _features(self, sd):
        ws = [sd[k].unsqueeze(1) for k in self.w_names]
        bs = [sd[k].unsqueeze(1) for k in self.b_names]
        return WeightSpaceFeatures(ws, bs)

    def _standardised(self, graphs):
        sd = self.ws.state_dicts(graphs)
        return {k: (sd[k].float() - self.mean[i]) / self.std[i] for i, k in enumerate(self.ws.weights)}

    @torch.no_grad()
    def fit_normalization(self, batches):
        vals = {k: [] for k in self.ws.weights}
        for g in batches:
            sd = self.ws.state_dicts(g)
            for k in vals:
                vals[k].append(sd[k].reshape(-1).float())
        for i, k in enumerate(self.ws.weights):
            v = torch.cat(vals[k])
            self.mean[i], self.std[i] = v.mean(), v.std().clamp(min=1e-6)
        return self

    def forward(self, graphs):
        return self.head(self.body(self._features(self._standardised(graphs))))


# ----------------------------------------------------------------------------- parts
def convert_part(quick: bool, big: bool = False) -> list[dict]:
    """Shared-structure batches against torch.stack, ws.graphs and nfn's tensors."""
    rows = []
    cases = [("digits CNN (small_cnn, 4,970 weights)", "small_cnn",
              dict(in_channels=1, padding=1, input_size=8), [256] if quick else ([2000, 10000] if big else [2000])),
             ("MLP 784-64-64-10", "mlp", dict(in_features=[1, 28, 28], hidden=[64, 64]),
              [256] if quick else [256, 2000])]
    for label, arch, kw, sizes in cases:
        net = create(arch, **kw)
        ws = WeightSpace.of(net, net.example_input())
        for B in sizes:
            g = torch.Generator().manual_seed(0)
            sds = [{k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
                    for k, v in net.state_dict().items()} for _ in range(B)]
            stacked = {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}
            t_stack = best_time(lambda: {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]})
            row = {"case": label, "B": B, "stack_s": t_stack}
            for layout in ("compact", "param"):
                ws.layout(layout)   # the trace and layout are per architecture: made once, outside
                row[f"shared_{layout}_s"] = best_time(lambda: SharedBatch.of(ws, stacked, layout))
                row[f"graphs_{layout}_s"] = best_time(lambda: ws.graphs(stacked, layout), repeats=1)
                row[f"shared_{layout}_from_sds_s"] = best_time(
                    lambda: SharedBatch.of(ws, {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}, layout))
            if HAVE_NFN:
                from nfn.common import state_dict_to_tensors

                def nfn_tensors():
                    per = [state_dict_to_tensors({k: v for k, v in sd.items() if v.is_floating_point()})
                           for sd in sds]
                    return ([torch.cat([p[0][i] for p in per]).unsqueeze(1) for i in range(len(per[0][0]))],
                            [torch.cat([p[1][i] for p in per]).unsqueeze(1) for i in range(len(per[0][1]))])
                row["nfn_s"] = best_time(nfn_tensors)
            lay = ws.layout("param")
            row["param_graph_bytes_per_weight"] = lay.graph_bytes(1) / ws.num_params
            row["shared_param_bytes_per_weight"] = (lay.num_edges * lay.width * 4) / ws.num_params
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _public_model(zoo_path, mode, hidden, layers, out_dim):
    from zoo import Zoo

    z = Zoo.open(zoo_path)
    rec = z.record(0)
    return PublicNFN(rec["arch"], z._graph_kwargs(rec), mode, hidden, layers, out_dim)


def accuracy_part(zoo_path: Path, seeds: int, epochs: int, max_train: int | None, rows: list) -> list[dict]:
    models = ["statnn", "nfn", "nfn_public", "gmn", "ngt"]
    for model in models:
        if model == "nfn_public" and not HAVE_NFN:
            continue
        taus, r2s, speeds, secs = [], [], [], []
        for seed in range(seeds):
            cfg = AccuracyConfig(zoo=str(zoo_path), model=model if model != "nfn_public" else "nfn",
                                 out=str(ROOT / "out" / "bench" / f"acc_{model}_{seed}"), epochs=epochs,
                                 seed=seed, max_train=max_train, progress=False)
            ready = _public_model(zoo_path, "hnp", cfg.hidden, cfg.layers, 1) if model == "nfn_public" else None
            result = fit(cfg, out_dim=1, loss_fn=lambda p, y: ((p.squeeze(-1) - y) ** 2).mean(),
                         scores_fn=_regression_scores, key="tau", model=ready)
            taus.append(result.test["tau"])
            r2s.append(result.test["r2"])
            speeds.append(result.train_networks_per_s)
            secs.append(result.seconds)
            print(f"accuracy {model} seed {seed}: τ {result.test['tau']:.4f} R² {result.test['r2']:.4f} "
                  f"({result.seconds:.0f} s)", flush=True)
        rows.append({"model": model, "tau": mean_std(taus), "r2": mean_std(r2s), "taus": taus, "r2s": r2s,
                     "train_networks_per_s": mean_std(speeds), "seconds": sum(secs)})
        on_row()
    return rows


def inr_part(zoo_path: Path, seeds: int, epochs: int, max_train: int | None, rows: list) -> list[dict]:
    import torch.nn.functional as F

    from tasks.classify_inr import _scores

    for model in ["statnn", "nfn", "nfn_public", "gmn", "ngt"]:
        if model == "nfn_public" and not HAVE_NFN:
            continue
        accs = []
        for seed in range(seeds):
            cfg = INRConfig(zoo=str(zoo_path), model=model if model != "nfn_public" else "nfn",
                            out=str(ROOT / "out" / "bench" / f"inr_{model}_{seed}"), epochs=epochs, seed=seed,
                            max_train=max_train, progress=False)
            if model == "nfn_public":
                ready = _public_model(zoo_path, "np", cfg.hidden, cfg.layers, cfg.num_classes)
                result = fit(cfg, out_dim=cfg.num_classes, loss_fn=F.cross_entropy, scores_fn=_scores, key="acc",
                             target_fn=lambda v: v.targets("label", dtype=torch.long), split_by="image",
                             model=ready)
            else:
                result = run_inr(cfg)
            accs.append(result.test["acc"])
            print(f"inr {model} seed {seed}: acc {result.test['acc']:.4f} ({result.seconds:.0f} s)", flush=True)
        rows.append({"model": model, "acc": mean_std(accs), "accs": accs})
        on_row()
    return rows


def throughput_part(zoo_path: Path, steps: int) -> list[dict]:
    """Training networks/s (forward + backward + update, batches of 64 digits CNNs read
    from the zoo once) and the peak resident memory added while training."""
    from tasks.predict_accuracy import build_model
    from zoo import Zoo

    z = Zoo.open(zoo_path)
    batches = [b for b, _ in zoo_batches(z.subset(range(64 * 4)), 64, target="test_acc")]
    ys = torch.rand(64)
    rows = []
    for model in ["statnn", "nfn", "nfn_public", "gmn", "ngt"]:
        if model == "nfn_public" and not HAVE_NFN:
            continue
        torch.manual_seed(0)
        net = (_public_model(zoo_path, "hnp", 32, 3, 1) if model == "nfn_public"
               else build_model(model, z, layout="compact", hidden=32, layers=3, out_dim=1))
        net.fit_normalization(batches)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step(b):
            loss = ((net(b).squeeze(-1) - ys) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(batches[0])   # warm-up
        rss0 = _status("VmRSS")
        peak_ok = reset_peak()
        t = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        dt = time.perf_counter() - t
        peak = _status("VmHWM")
        rows.append({"model": model, "networks_per_s": steps * 64 / dt,
                     "peak_extra_mb": (peak - rss0) / 2 ** 20 if peak_ok and peak and rss0 else None,
                     "params": sum(p.numel() for p in net.parameters())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- report
def fmt(ms, digits=3):
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def on_row() -> None:
    """Save what is measured so far (set by main)."""


def write_markdown(res: dict, path: Path) -> None:
    L = ["# Metanetworks: conversion, accuracy prediction, INR classification, throughput", "",
         f"`{res['command']}` on {res['machine']}, torch {res['torch']}, "
         f"public nfn {'installed' if res['nfn'] else 'not installed'}; {res['seconds']:.0f} s in all.", ""]
    if res.get("convert"):
        L += ["## Shared-structure batches (seconds, best of 3)", "",
              "| checkpoints | B | torch.stack | SharedBatch compact | SharedBatch param | ws.graphs compact "
              "| ws.graphs param | nfn tensors | shared/stack (compact, param) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["convert"]:
            L.append(f"| {r['case']} | {r['B']} | {r['stack_s']:.4f} | {r['shared_compact_s']:.4f} | "
                     f"{r['shared_param_s']:.4f} | {r['graphs_compact_s']:.4f} | {r['graphs_param_s']:.4f} | "
                     f"{r.get('nfn_s', float('nan')):.4f} | {r['shared_compact_s'] / r['stack_s']:.2f}×, "
                     f"{r['shared_param_s'] / r['stack_s']:.2f}× |")
        L += ["", "SharedBatch columns convert an already stacked zoo batch (what `Zoo.stacked` returns); "
              "torch.stack and nfn start from B separate state dicts. Bytes per weight, param layout: "
              + ", ".join(f"{r['case']}: PyG graph {r['param_graph_bytes_per_weight']:.1f}, shared batch "
                          f"{r['shared_param_bytes_per_weight']:.1f}" for r in res["convert"][:1]) + ".", ""]
    if res.get("accuracy"):
        cap = f", at most {res['max_train']} training checkpoints" if res.get("max_train") else ""
        L += [f"## Accuracy prediction ({res['accuracy_zoo']}, every saved step, test split, {res['seeds']} "
              f"seed(s), {res['epochs']} epochs{cap})", "", "| model | Kendall τ | R² | train networks/s |", "|---|---|---|---:|"]
        for r in res["accuracy"]:
            L.append(f"| {r['model']} | {fmt(r['tau'])} | {fmt(r['r2'])} | {r['train_networks_per_s'][0]:.0f} |")
        L.append("")
    if res.get("inr"):
        L += [f"## INR classification ({res['inr_zoo']}, test accuracy, {res['seeds']} seed(s), "
              f"{res['epochs']} epochs)", "", "| model | accuracy |", "|---|---|"]
        for r in res["inr"]:
            L.append(f"| {r['model']} | {fmt(r['acc'])} |")
        L.append("")
    if res.get("throughput"):
        L += ["## Training throughput and memory (digits CNN, batches of 64, hidden 32, 3 layers)", "",
              "| model | networks/s | peak extra memory (MB) | parameters |", "|---|---:|---:|---:|"]
        for r in res["throughput"]:
            peak = "n/a" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}"
            L.append(f"| {r['model']} | {r['networks_per_s']:.0f} | {peak} | {r['params']:,} |")
        L.append("")
    L += ["Not measured here yet: the mixed-architecture zoo, unseen architectures, the scale/sign-aware "
          "GMN and torchrun runs (see the issue).", ""]
    path.write_text("\n".join(L))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small zoos, 1 seed, 1 epoch")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--parts", default="convert,accuracy,inr,throughput")
    ap.add_argument("--max-train", type=int, default=None, help="cap on training checkpoints per task")
    ap.add_argument("--throughput-steps", type=int, default=None)
    ap.add_argument("--big", action="store_true", help="also convert 10,000 digits CNNs")
    ap.add_argument("--name", default=None, help="output name (default metanet, or metanet_quick)")
    args = ap.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 8)
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    res = {"command": "python benchmarks/metanetworks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
           "nfn": HAVE_NFN, "seeds": seeds, "epochs": epochs, "max_train": args.max_train}
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    name = args.name or ("metanet_quick" if args.quick else "metanet")

    def save():   # after every part: a long run killed midway keeps what it measured
        res["seconds"] = time.perf_counter() - t0
        (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
        (ROOT / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(res, indent=1))
        write_markdown(res, ROOT / "benchmarks" / f"{name}.md")

    global on_row
    on_row = save
    if "convert" in parts:
        res["convert"] = convert_part(args.quick, args.big)
        save()
    cnn = siren = None
    if parts & {"accuracy", "throughput"}:
        cnn = ensure_zoo("digits_cnn", 100 if args.quick else 1000, args.quick)
    if "accuracy" in parts:
        res["accuracy_zoo"] = str(cnn.relative_to(ROOT))
        res["accuracy"] = []
        accuracy_part(cnn, seeds, epochs, args.max_train, res["accuracy"])
        save()
    if "inr" in parts:
        siren = ensure_zoo("digits_siren", 100 if args.quick else 1000, args.quick)
        res["inr_zoo"] = str(siren.relative_to(ROOT))
        res["inr"] = []
        inr_part(siren, seeds, epochs, args.max_train, res["inr"])
        save()
    if "throughput" in parts:
        res["throughput"] = throughput_part(cnn, args.throughput_steps or (5 if args.quick else 30))
    save()
    print(f"wrote benchmarks/{name}.md ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
