"""Metanetworks on zoos (named so as not to shadow the ``metanet`` package): conversion speed of shared-structure batches, accuracy
prediction (Kendall τ, R²), INR classification, training throughput and peak memory,
with the public ``nfn`` package (NFN-HNP / NFN-NP) as a baseline where it is installed.

    python benchmarks/metanetworks.py            # the full run (3 seeds)
    python benchmarks/metanetworks.py --quick    # a smoke run: small zoos, 1 seed, 1 epoch

Zoos are built with ``metanet zoo build`` when absent (zoos/digits_cnn: 1,000 digits
CNNs; zoos/digits_siren: 1,797 SIRENs, one per digits image (16x16); --quick builds small ones under
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
def ensure_zoo(recipe: str, n: int, quick: bool, options: dict | None = None) -> Path:
    out = ROOT / "zoos" / (f"quick_{recipe}" if quick else recipe)
    if not (out / "manifest.jsonl").exists():
        cmd = ["metanet", "zoo", "build", "--recipe", recipe, "--n", str(n), "--out", str(out),
               "--executor", "batched", "--quiet"] + (["--options", json.dumps(options)] if options else [])
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


# GMN variants: build_model's GMN with these options (metanet.nn.GMN's arguments). The hybrids
# measured before GMN's weight_stats_clip (its default 10 since) keep the unclipped statistics
# their pages were measured with; gmn_hybrid_sum_clip is the hybrid with the library's default.
_UNCLIPPED = {"weight_stats_clip": None}
GMN_VARIANTS = {
    "gmn_canonical": {"canonical": "both"},            # scale/sign-aware
    "gmn_pna": {"readout": "pna"},                     # mean/std/max/min per edge and node group
    "gmn_hybrid": {"weight_stats_bins": 8, **_UNCLIPPED},   # + StatNN's statistics of the input weights
    "gmn_pna_hybrid": {"readout": "pna", "weight_stats_bins": 8, **_UNCLIPPED},
    "gmn_maggr": {"aggr": ("mean", "max", "std")},     # PNA-like message aggregation
    "gmn_maggr_pna_hybrid": {"aggr": ("mean", "max", "std"), "readout": "pna", "weight_stats_bins": 8,
                             **_UNCLIPPED},
    "gmn_hybrid_sum": {"weight_stats_bins": 8, "weight_stats_fusion": "sum", **_UNCLIPPED},   # StatNN's MLP + GMN's
    "gmn_hybrid_sum_clip": {"weight_stats_bins": 8, "weight_stats_fusion": "sum", "weight_stats_clip": 10.0},
    "gmn_pna_hybrid_sum": {"readout": "pna", "weight_stats_bins": 8, "weight_stats_fusion": "sum", **_UNCLIPPED},
    "gmn_rnorm": {"readout_norm": "batch"},            # pooled features standardised across networks
}


READOUT_NORM = None   # --readout-norm: GMN's and NGT's readout_norm in the parts run (None: off)
GMN_FAST = False      # --gmn-fast: GMN (and its variants) with fast=True, the same function (metanet.nn.GMN)


RNORM_ALIASES = {"ngt_rnorm": "ngt"}   # model names that run their base model with readout_norm='batch'


def _graph_model(model: str) -> bool:
    """Whether ``model`` is a GMN or NGT (reads ``readout_norm``)."""
    return model in ("gmn", "ngt", "gmn_hybrid", "gmn_wide") or model in GMN_VARIANTS or model in RNORM_ALIASES


def _readout_norm(model: str):
    """The readout_norm ``model`` trains with: 'batch' for the *_rnorm names, else --readout-norm
    for graph metanetworks, else None."""
    if model in RNORM_ALIASES:
        return "batch"
    return READOUT_NORM if _graph_model(model) else None


def _ready_model(model: str, zoo_path, cfg):
    """A model the task's build_model does not make by name: the public NFN-HNP, or a
    GMN variant of GMN_VARIANTS (otherwise as build_model's GMN)."""
    if model == "nfn_public":
        return _public_model(zoo_path, "hnp", cfg.hidden, cfg.layers, 1)
    if model in GMN_VARIANTS or (GMN_FAST and model == "gmn"):
        from metanet.nn import GMN
        from zoo import Zoo

        from tasks.predict_accuracy import build_model

        plain = build_model("gmn", Zoo.open(zoo_path), layout=cfg.layout, hidden=cfg.hidden,
                            layers=cfg.layers, out_dim=1, readout_norm=READOUT_NORM)
        return GMN(**{**plain._hub_mixin_config, **GMN_VARIANTS.get(model, {}),
                      **({"fast": True} if GMN_FAST else {})})
    return None


WIDE = 64   # hidden width of the "gmn_wide" variant (build_model's GMN otherwise: AccuracyConfig.hidden)


def _regress(zoo_path, model: str, seed: int, epochs: int, max_train, tag: str):
    cfg = AccuracyConfig(zoo=str(zoo_path), model="gmn" if model in GMN_VARIANTS or model == "gmn_wide"
                         else {"nfn_public": "nfn", **RNORM_ALIASES}.get(model, model),
                         out=str(ROOT / "out" / "bench" / f"{tag}_{model}_{seed}"), epochs=epochs,
                         seed=seed, max_train=max_train, progress=False,
                         readout_norm=_readout_norm(model),
                         **({"hidden": WIDE} if model == "gmn_wide" else {}))
    return fit(cfg, out_dim=1, loss_fn=lambda p, y: ((p.squeeze(-1) - y) ** 2).mean(),
               scores_fn=_regression_scores, key="tau", model=_ready_model(model, zoo_path, cfg))


def _regression_row(model, results) -> dict:
    taus = [r.test["tau"] for r in results]
    r2s = [r.test["r2"] for r in results]
    return {"model": model, "tau": mean_std(taus), "r2": mean_std(r2s), "taus": taus, "r2s": r2s,
            "train_networks_per_s": mean_std([r.train_networks_per_s for r in results]),
            "best_epochs": [r.best_epoch for r in results], "seconds": sum(r.seconds for r in results)}


def accuracy_part(zoo_path: Path, seeds: int, epochs: int, max_train: int | None, rows: list,
                  models=("statnn", "gmn", "nfn_public", "nfn", "ngt", "gmn_canonical"), tag="acc") -> list[dict]:
    for model in models:
        if model == "nfn_public" and not HAVE_NFN:
            continue
        results = []
        for seed in range(seeds):
            result = _regress(zoo_path, model, seed, epochs, max_train, tag)
            results.append(result)
            print(f"{tag} {model} seed {seed}: τ {result.test['tau']:.4f} R² {result.test['r2']:.4f} "
                  f"(best epoch {result.best_epoch}, {result.seconds:.0f} s)", flush=True)
        rows.append(_regression_row(model, results))
        on_row()
    return rows


UNSEEN_MODELS = ("gmn", "ngt")   # default; StatNN and NFN read one architecture's layout only


def unseen_part(cnn: Path, wide: Path, seeds: int, epochs: int, max_train: int | None, rows: list,
                models=UNSEEN_MODELS) -> list[dict]:
    """GMN and NGT trained on the digits-CNN zoo (the accuracy part's best checkpoints
    when present, else trained here) scored on the test split of a zoo of wider and
    deeper CNNs they never saw, against the same model trained on that zoo's training
    split (the same fixed split). ``models``: graph metanetworks (GMN, its variants, NGT);
    others are skipped."""
    from tasks.predict_accuracy import _regression_scores as scores
    from tasks.predict_accuracy import load_model, predict

    test = fixed_split(wide)[2]
    for model in [m for m in models if _graph_model(m)]:
        transfer, native, secs = [], [], 0.0
        for seed in range(seeds):
            best = ROOT / "out" / "bench" / f"acc_{model}_{seed}" / "best"
            saved = json.loads((best / "task.json").read_text())["config"] if (best / "task.json").exists() else {}
            if saved.get("zoo") != str(cnn) or saved.get("readout_norm") != _readout_norm(model):
                _regress(cnn, model, seed, epochs, max_train, "acc")
            net, _ = load_model(best)
            pred, y = predict(net, zoo_batches(test, 64, "compact", target="test_acc"))
            transfer.append(scores(pred, y))
            t = time.perf_counter()
            native.append(_regress(wide, model, seed, epochs, max_train, "wide").test)
            secs += time.perf_counter() - t
            print(f"unseen {model} seed {seed}: trained on digits CNNs τ {transfer[-1]['tau']:.4f}, "
                  f"on the wide zoo τ {native[-1]['tau']:.4f}", flush=True)
        rows.append({"model": model, "transfer_tau": mean_std([t["tau"] for t in transfer]),
                     "transfer_r2": mean_std([t["r2"] for t in transfer]),
                     "native_tau": mean_std([t["tau"] for t in native]),
                     "native_r2": mean_std([t["r2"] for t in native]),
                     "transfer_taus": [t["tau"] for t in transfer], "native_taus": [t["tau"] for t in native],
                     "test_checkpoints": len(test), "seconds": secs})
        on_row()
    return rows


MIXED_MODELS = ("statnn", "gmn", "ngt")   # the mixed part's default models


def fixed_split(zoo) -> list:
    """(train, validation, test) of a zoo (a folder or an open Zoo) as the accuracy task
    splits it: AccuracyConfig's fractions and split seed, by network."""
    from zoo import Zoo

    z = zoo if isinstance(zoo, Zoo) else Zoo.open(zoo)
    return z.split(list(AccuracyConfig.split), seed=AccuracyConfig.split_seed, by="job")


def parse_model_epochs(spec: str | None, models) -> dict[str, int]:
    """``--model-epochs``: "statnn=24,gmn=4" -> {"statnn": 24, "gmn": 4}, each a model of
    ``models`` (the mixed part's) with a positive whole number of epochs; a model not named
    trains for --epochs."""
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        name, eq, n = item.strip().partition("=")
        if not eq or not name or not n.strip().isdigit() or int(n) < 1:
            raise SystemExit(f"--model-epochs: {item!r} is not MODEL=EPOCHS with EPOCHS a positive whole number "
                             f"(e.g. statnn=24,gmn=4)")
        if name not in models:
            raise SystemExit(f"--model-epochs: {name!r} is not one of the mixed part's models ({','.join(models)})")
        if name in out:
            raise SystemExit(f"--model-epochs: {name!r} given twice")
        out[name] = int(n)
    return out


def _family(rec) -> str:
    """A mixed-zoo network's family: its architecture's name (cnn, tiny_resnet, tiny_transformer)."""
    return rec["arch"]


def mixed_profile(zoo_path: Path, n_batches: int, models=("statnn", "gmn", "gmn_fast", "ngt")) -> dict:
    """Where a mixed-zoo training step spends its time: the first tracing of every
    architecture of the zoo (once per process; the parameter-graph structure is cached per
    architecture after it), then on the first ``n_batches`` shuffled training batches of 64
    (as fit() reads them: a padded PyG batch of mixed architectures) the data path per
    stage (stacking from the shards, ws.graphs per architecture, to_data_list, collate)
    and the training networks/s (forward, backward, AdamW step; one pass) and evaluation
    networks/s (forward, no gradients) of each model on the same batches. ``gmn`` and
    ``gmn_fast`` are one GMN with the same parameters, default layers and ``fast=True``."""
    import numpy as np

    from metanet.graph import collate
    from metanet.nn import GMN
    from tasks.predict_accuracy import _by_arch, build_model
    from zoo import Zoo

    z = Zoo.open(zoo_path)
    out = {"load": os.getloadavg()[0], "architectures": len(z.architectures())}
    t = time.perf_counter()
    _by_arch(z, range(len(z)))   # traces each architecture once (cached for the training below)
    out["trace_s"] = time.perf_counter() - t
    train = fixed_split(z)[0]
    order = np.random.default_rng(0).permutation(len(train))
    stages = dict(stack_s=0.0, graphs_s=0.0, datalist_s=0.0, collate_s=0.0)
    batches, shapes = [], []
    for a in range(0, min(len(order), 64 * n_batches), 64):
        pos = order[a:a + 64].tolist()
        where = {}
        for group in _by_arch(train, pos).values():
            t = time.perf_counter()
            st = train.stacked(group)
            t1 = time.perf_counter()
            b = train.weight_space(group[0]).graphs(st, "compact")
            t2 = time.perf_counter()
            where.update(zip(group, b.to_data_list()))
            t3 = time.perf_counter()
            stages["stack_s"] += t1 - t
            stages["graphs_s"] += t2 - t1
            stages["datalist_s"] += t3 - t2
        t = time.perf_counter()
        g = collate([where[p] for p in pos])
        stages["collate_s"] += time.perf_counter() - t
        batches.append((g, train.subset(pos).targets("test_acc")))
        shapes.append({"networks": len(pos), "architectures": len(_by_arch(train, pos)), "nodes": int(g.num_nodes),
                       "edges": int(g.edge_attr.shape[0]), "width": int(g.edge_attr.shape[1]),
                       "pad_fraction": float(g.pad_fraction)})
    n = sum(len(y) for _, y in batches)
    out.update(batches=shapes, networks=n, data_networks_per_s=n / sum(stages.values()), **stages)
    t = time.perf_counter()   # the same batches again, as a later epoch reads them (spaces and layouts held)
    for a in range(0, min(len(order), 64 * n_batches), 64):
        pos = order[a:a + 64].tolist()
        where = {}
        for group in _by_arch(train, pos).values():
            where.update(zip(group, train.weight_space(group[0]).graphs(train.stacked(group), "compact").to_data_list()))
        collate([where[p] for p in pos])
    out["data_warm_networks_per_s"] = n / (time.perf_counter() - t)
    out["models"] = []
    base = None
    for model in models:
        torch.manual_seed(0)
        kind = "gmn" if model.startswith("gmn") else model
        norm = "batch" if kind in ("gmn", "ngt") else None
        net = build_model(kind, train, layout="compact", hidden=32, layers=3, out_dim=1, readout_norm=norm)
        if model == "gmn_fast":
            net = GMN(**{**net._hub_mixin_config, "fast": True})
            if base is not None:
                net.load_state_dict(base.state_dict())
        elif model == "gmn":
            base = net
        net.fit_normalization([g for g, _ in batches])
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        net.train()
        t = time.perf_counter()
        for g, y in batches:
            loss = ((net(g).squeeze(-1) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t
        net.eval()
        t = time.perf_counter()
        with torch.no_grad():
            for g, _ in batches:
                net(g)
        eval_s = time.perf_counter() - t
        out["models"].append({"model": model, "train_networks_per_s": n / train_s, "eval_networks_per_s": n / eval_s,
                              "train_s": train_s, "eval_s": eval_s})
        print("mixed profile:", json.dumps(out["models"][-1]), flush=True)
    return out


def mixed_families(zoo_path: Path, model: str, seed: int) -> tuple[dict, dict]:
    """Test τ per family (cnn, tiny_resnet, tiny_transformer) of ``model``'s best checkpoint
    of ``seed`` (out/bench/mixed_<model>_<seed>/best, as the mixed part saved it) on the
    fixed test split: ``({family: test checkpoints}, {family: τ})``."""
    from tasks.predict_accuracy import kendall_tau, load_model, predict

    test = fixed_split(zoo_path)[2]
    fams = [_family(r) for r in test.records]
    net, _ = load_model(ROOT / "out" / "bench" / f"mixed_{model}_{seed}" / "best")
    pred, y = predict(net, zoo_batches(test, 64, "compact", target="test_acc"))
    taus = {}
    for f in sorted(set(fams)):
        idx = torch.tensor([i for i, g in enumerate(fams) if g == f])
        taus[f] = kendall_tau(pred[idx], y[idx])
    return {f: fams.count(f) for f in sorted(set(fams))}, taus


INR_BATCH = 16   # small batches: a few hundred optimizer steps in a few epochs of ~1,400 INRs
# --inr-zoo: recipe -> (networks, recipe options) that ensure_zoo builds when the zoo is absent
INR_ZOOS = {"digits_siren": (1797, {"views": 1}),       # one SIREN per digits image (all 1,797)
            "shapes_siren": (1000, {"views": 1})}       # one per synthetic shape image (the recipe's 1,000)


def zoo_build_line(zoo_path: Path) -> str:
    """The command that built the zoo at ``zoo_path`` (from its zoo.json), options that differ
    from the recipe's defaults only."""
    from zoo.recipes import get_recipe

    b = json.loads((zoo_path / "zoo.json").read_text()).get("build", {})
    try:
        base = {"sample": True, "hparams": {}, "data_root": None, **get_recipe(b["recipe"]).defaults}
    except Exception:   # an imported or unknown recipe: show every option
        base = {}
    opts = {k: v for k, v in b.get("options", {}).items() if base.get(k, object()) != v}
    return (f"metanet zoo build --recipe {b.get('recipe')} --n {b.get('n')}"
            + (f" --options '{json.dumps(opts, sort_keys=True)}'" if opts else ""))


def _inr_model(model: str, zoo_path, cfg):
    """INR classifiers the task's build_model does not make by name: NFN-NP (ours and the
    public package's; build_model's NFN is HNP) and the scale/sign-aware GMN."""
    from zoo import Zoo

    if model == "nfn_public":
        return _public_model(zoo_path, "np", cfg.hidden, cfg.layers, cfg.num_classes)
    z = Zoo.open(zoo_path).where(step="last")
    if model == "nfn":
        from metanet.nn import NFN

        return NFN.for_space(z.weight_space(0), cfg.layout, "np", hidden=cfg.hidden, layers=cfg.layers,
                             out_dim=cfg.num_classes)
    if model == "gmn_canonical":
        from metanet.nn import GMN

        from tasks.predict_accuracy import build_model

        plain = build_model("gmn", z, layout=cfg.layout, hidden=cfg.hidden, layers=cfg.layers,
                            out_dim=cfg.num_classes, readout_norm=cfg.readout_norm)
        return GMN(**{**plain._hub_mixin_config, "canonical": "both"})
    return None


def inr_part(zoo_path: Path, seeds: int, epochs: int, max_train: int | None, rows: list,
             models=("statnn", "nfn", "nfn_public", "gmn", "gmn_canonical", "ngt")) -> list[dict]:
    import torch.nn.functional as F

    from tasks.classify_inr import _scores

    for model in models:
        if model == "nfn_public" and not HAVE_NFN:
            continue
        accs, secs = [], 0.0
        for seed in range(seeds):
            cfg = INRConfig(zoo=str(zoo_path), model={"nfn_public": "nfn", "gmn_canonical": "gmn", **RNORM_ALIASES}.get(model, model),
                            out=str(ROOT / "out" / "bench" / f"inr_{model}_{seed}"), epochs=epochs, seed=seed,
                            max_train=max_train, batch_size=INR_BATCH, progress=False,
                            readout_norm=_readout_norm(model))
            result = fit(cfg, out_dim=cfg.num_classes, loss_fn=F.cross_entropy, scores_fn=_scores, key="acc",
                         target_fn=lambda v: v.targets("label", dtype=torch.long), split_by="image",
                         model=_inr_model(model, zoo_path, cfg))
            accs.append(result.test["acc"])
            secs += result.seconds
            print(f"inr {model} seed {seed}: acc {result.test['acc']:.4f} ({result.seconds:.0f} s)", flush=True)
        rows.append({"model": model, "acc": mean_std(accs), "accs": accs, "seconds": secs,
                     "best_epochs": [result.best_epoch]})
        on_row()
    return rows


THROUGHPUT_MODELS = ("statnn", "nfn", "nfn_public", "gmn", "gmn_canonical", "ngt")


def throughput_one(zoo_path: Path, model: str, steps: int, device: str = "cpu") -> dict:
    """One model's training networks/s (forward + backward + update, batches of 64
    digits CNNs read from the zoo once) and the peak memory that training adds:
    run in a fresh process (``throughput_part``), so that no earlier model's freed heap
    hides it; the peak is reset (Linux ``clear_refs``) after the batches and the model
    are made and before the first step, whose gradients and optimizer state count.
    On a GPU (``device="cuda"``): the batches and the model live there, the clock waits
    for the GPU, and the peak is of GPU memory (``torch.cuda.max_memory_allocated``)."""
    from tasks.predict_accuracy import AccuracyConfig, _by_arch, build_model
    from zoo import Zoo

    torch.set_num_threads(1)
    z = Zoo.open(zoo_path)
    # checkpoints of one structure (as training batches are): a zoo's first rows may mix two
    # (the digits CNNs with ReLU and with tanh), which some models (GMN canonical) refuse
    rows = max(_by_arch(z, range(len(z))).values(), key=len)[:64 * 4]
    batches = [b for b, _ in zoo_batches(z.subset(rows), 64, target="test_acc")]
    ys = torch.rand(64)
    torch.manual_seed(0)
    cfg = AccuracyConfig(zoo=str(zoo_path), hidden=32, layers=3)
    net = (_ready_model(model, zoo_path, cfg)
           or build_model(model, z, layout="compact", hidden=32, layers=3, out_dim=1))
    net.fit_normalization(batches)
    gpu = torch.device(device).type == "cuda"
    net.to(device)
    batches, ys = [b.to(device) for b in batches], ys.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step(b):
        loss = ((net(b).squeeze(-1) - ys) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync():
        if gpu:
            torch.cuda.synchronize()

    sync()
    if gpu:
        mem0 = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _status("VmRSS")
    peak_ok = reset_peak()
    step(batches[0])   # warm-up (timed out, but its memory counts)
    sync()
    t = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    sync()
    dt = time.perf_counter() - t
    if gpu:
        extra = (torch.cuda.max_memory_allocated() - mem0) / 2 ** 20
    else:
        peak = _status("VmHWM")
        extra = (peak - rss0) / 2 ** 20 if peak_ok and peak and rss0 else None
    return {"model": model, "device": str(device), "networks_per_s": steps * 64 / dt, "peak_extra_mb": extra,
            "params": sum(p.numel() for p in net.parameters())}


def throughput_part(zoo_path: Path, steps: int, devices=("cpu",)) -> list[dict]:
    """Every model of THROUGHPUT_MODELS measured by throughput_one in its own process, on
    each of ``devices`` in turn (the CPU with one thread)."""
    rows = []
    for model in THROUGHPUT_MODELS:
        if model == "nfn_public" and not HAVE_NFN:
            continue
        for device in devices:
            out = subprocess.run([sys.executable, __file__, "--throughput-one", model, "--zoo", str(zoo_path),
                                  "--throughput-steps", str(steps), "--device", device],
                                 check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- report
def fmt(ms, digits=3):
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def on_row() -> None:
    """Save what is measured so far (set by main)."""


def run_of(runs: list, model: str):
    """Index of the last command in ``runs`` (a part's part_runs) that trained ``model``: one
    that named it in --models, or one without --models (its part's default models)."""
    found = None
    for i, st in enumerate(runs):
        if not st.get("models") or model in st["models"].split(","):
            found = i
    return found


def _load_result(name: str) -> dict | None:
    f = ROOT / "benchmarks" / "results" / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def _same_run(res: dict, part: str, models) -> tuple[int, dict] | None:
    """The latest command of ``part`` that trained every one of ``models`` (its index and
    part_runs entry), when the rows of all of them come from it; else None."""
    runs = res.get("part_runs", {}).get(part, [])
    have = {r["model"] for r in res.get(part) or []}
    for i in reversed(range(len(runs))):
        if all(m in have and run_of(runs, m) == i for m in models):
            return i, runs[i]
    return None


# pages of the mixed part run on every training checkpoint (no --max-train), each from one command
FULL_MIXED_PAGES = ("metanet_mixed_full", "metanet_mixed_ngt", "metanet_mixed_hybrid")
ONE_COMMAND_BUDGET_S = 45 * 60   # issue 15: the whole page from one command in about 45 minutes


def time_section(res: dict) -> list[str]:
    """What the one command's parts cost on this machine: for each part, the training
    seconds (summed over seeds) of its default models as measured in the runs these pages
    read (metanet.json; the mixed part from the pages run on every training checkpoint,
    FULL_MIXED_PAGES, else metanet_mixed.json; INR from metanet_inr.json), against the
    issue's 45-minute budget.
    A default model that no run measured is named, and the total is then a lower bound."""
    full = [(n, r) for n in FULL_MIXED_PAGES if (r := _load_result(n)) and r.get("mixed")]
    mixed = full or [("metanet_mixed", _load_result("metanet_mixed") or {})]
    parts = [("accuracy", [("metanet", res)], ("statnn", "gmn", "nfn_public", "nfn", "ngt", "gmn_canonical")),
             ("unseen", [("metanet", res)], UNSEEN_MODELS),
             ("mixed", mixed, MIXED_MODELS),
             ("inr", [("metanet_inr", _load_result("metanet_inr") or {})],
              ("statnn", "nfn", "nfn_public", "gmn", "gmn_canonical", "ngt"))]
    L = ["## Time of the one command", "",
         "Training seconds of each part's default models, summed over seeds, as measured in the runs "
         "these pages read (one torch thread, load averages as stated there; a model measured on two "
         "pages is read from the first named); the settings are those runs' (seeds, epochs, training "
         "cap), not the script's defaults.", "",
         "| part | from | seeds | epochs | models measured | seconds | default models not measured |",
         "|---|---|---:|---|---|---:|---|"]
    total, missing = 0.0, []
    for part, sources, models in parts:
        rows = {}   # model -> (its row, the result holding it): the first source that measured it
        for _, src in sources:
            for r in src.get(part) or []:
                if isinstance(r, dict) and r.get("seconds") and r["model"] not in rows:
                    rows[r["model"]] = (r, src)
        have = [m for m in models if m in rows]
        lack = [m for m in models if m not in have]
        secs = sum(rows[m][0]["seconds"] for m in have)
        total += secs
        missing += lack
        used = [n for n, src in sources if any(rows[m][1] is src for m in have)] or [sources[0][0]]

        def epochs(m):   # the row's own, else the epochs of the command that trained it
            r, src = rows[m]
            runs = src.get("part_runs", {}).get(part, [])
            i = run_of(runs, m)
            return r.get("epochs", src.get("epochs") if i is None else runs[i].get("epochs"))

        eps = sorted({epochs(m) for m in have}, key=str)
        seeds = sorted({len(rows[m][0].get("taus") or rows[m][0].get("accs") or []) or rows[m][1].get("seeds")
                        for m in have}, key=str)
        L.append(f"| {part} | {', '.join(f'{n}.json' for n in used)} | {', '.join(map(str, seeds))} | "
                 f"{', '.join(map(str, eps))} | {', '.join(have) or '-'} | {secs:.0f} | {', '.join(lack) or '-'} |")
    L += ["", f"In all {total / 60:.0f} min of training"
          + (f" without {', '.join(sorted(set(missing)))} where not measured (a lower bound)" if missing else "")
          + f", against the issue's budget of about {ONE_COMMAND_BUDGET_S // 60} min for the whole page: "
          + ("met." if total <= ONE_COMMAND_BUDGET_S and not missing else
             f"not met ({total / ONE_COMMAND_BUDGET_S:.1f}× the budget"
             + (" at least" if missing else "") + "). `--quick` is the run that fits minutes: small zoos, "
             "1 seed, 1 epoch, numbers that mean nothing."), ""]
    return L


def targets_section(res: dict) -> list[str]:
    """Issue 15's targets against what benchmarks/results/metanet*.json hold: one row per
    target with the measured value, the command that measured it, met or not. Margins are
    taken only between rows of one command."""
    names = {"gmn": "GMN", "gmn_rnorm": "GMN, readout_norm='batch'", "gmn_canonical": "scale/sign-aware GMN",
             "gmn_hybrid_sum": "GMN + StatNN hybrid", "gmn_hybrid_sum_clip": "GMN + StatNN hybrid (clipped statistics)",
             "ngt": "NGT", "ngt_rnorm": "NGT, readout_norm='batch'"}
    T = ["## Against the issue's targets", "",
         "Written from benchmarks/results/metanet*.json; a margin is read only between rows of one command.", "",
         "| target | measured | command | met |", "|---|---|---|---|"]

    def cmd(st):
        return f"`{st['command']}`" + (f" (load {st['machine_load']:.1f})" if "machine_load" in st else "")

    # accuracy prediction, digits CNN: GMN >= StatNN + 0.02 and >= public NFN-HNP, same run
    acc = {r["model"]: r for r in res.get("accuracy") or []}
    shown = False
    for m in [m for m in acc if m == "gmn" or m in GMN_VARIANTS]:
        same = _same_run(res, "accuracy", ["statnn", "nfn_public", m])
        if same is None:
            continue
        shown = True
        d1 = acc[m]["tau"][0] - acc["statnn"]["tau"][0]
        d2 = acc[m]["tau"][0] - acc["nfn_public"]["tau"][0]
        T.append(f"| accuracy ({res.get('accuracy_zoo')}): GMN ≥ StatNN + 0.02 τ and ≥ public NFN-HNP, same run "
                 f"| {names.get(m, m)} τ {fmt(acc[m]['tau'])}: {d1:+.3f} over StatNN ({fmt(acc['statnn']['tau'])}), "
                 f"{d2:+.3f} over public NFN-HNP ({fmt(acc['nfn_public']['tau'])}) | {cmd(same[1])} "
                 f"| {'met' if d1 >= 0.02 and d2 >= 0 else 'not met'} |")
    if not shown:
        T.append("| accuracy: GMN ≥ StatNN + 0.02 τ and ≥ public NFN-HNP, same run | no command holds GMN, StatNN "
                 "and the public NFN-HNP | | not measured |")

    # mixed architectures: GMN >= StatNN + 0.08
    mixed_res = _load_result("metanet_mixed")
    src = mixed_res if mixed_res and mixed_res.get("mixed") else res
    mixed = {r["model"]: r for r in src.get("mixed") or []}
    rows = []
    for m in [m for m in mixed if m == "gmn" or m in GMN_VARIANTS]:
        same = _same_run(src, "mixed", ["statnn", m])
        if same is None:
            continue
        d = mixed[m]["tau"][0] - mixed["statnn"]["tau"][0]
        size = f", {src['mixed_networks']} networks" if "mixed_networks" in src else ""
        eg, es = mixed[m].get("epochs", src.get("epochs")), mixed["statnn"].get("epochs", src.get("epochs"))
        label = names.get(m, m) + (" (fast=True)" if same[1].get("gmn_fast") and m == "gmn" else "")
        eps = f"{eg} epochs" if eg == es else f"{label} {eg} epochs, StatNN {es} epochs"
        cap = same[1].get("max_train", src.get("max_train"))
        rows.append(f"| mixed ({src.get('mixed_zoo')}{size}): GMN ≥ StatNN + 0.08 τ | {label} τ "
                    f"{fmt(mixed[m]['tau'])} ({len(mixed[m]['taus'])} seed(s)): {d:+.3f} over StatNN "
                    f"({fmt(mixed['statnn']['tau'])}, {len(mixed['statnn']['taus'])} seed(s)) | {cmd(same[1])} | "
                    f"{'met' if d >= 0.08 else 'not met'} in this run ({eps}, "
                    + (f"at most {cap} training checkpoints" if cap else "every training checkpoint")
                    + (f"; {n} seed(s), the target asks for 3" if (n := min(len(mixed[m]["taus"]),
                                                                          len(mixed["statnn"]["taus"]))) < 3 else "")
                    + ") |")
    for page in FULL_MIXED_PAGES:   # models on every training checkpoint, one command per page
        full = _load_result(page)
        if not (rows and full and full.get("mixed")):
            continue
        fm = {r["model"]: r for r in full["mixed"]}
        for m in [m for m in fm if _graph_model(m)]:
            same = _same_run(full, "mixed", ["statnn", m])
            if not same or "statnn" not in fm:
                continue
            d = fm[m]["tau"][0] - fm["statnn"]["tau"][0]
            n = min(len(fm[m]["taus"]), len(fm["statnn"]["taus"]))
            who = names.get(m, m).split(",")[0]
            aside = "" if who == "GMN" else f": {who}, the target names GMN"
            rows.append(f"| mixed, every training checkpoint ({page}.md){aside} "
                        f"| {who} {fmt(fm[m]['tau'])} − StatNN {fmt(fm['statnn']['tau'])}: {d:+.3f} ({n} seed(s); "
                        f"{who} {fm[m].get('epochs', full.get('epochs'))} epochs, StatNN "
                        f"{fm['statnn'].get('epochs', full.get('epochs'))}) | {cmd(same[1])} | "
                        f"{'met' if d >= 0.08 else 'not met'}{'' if who == 'GMN' else ' at its bar (not the target)'}"
                        + (f" on {n} seed(s); the target asks for 3" if n < 3 else "") + " |")
    control = _load_result("metanet_mixed_statnn")
    if rows and control and control.get("mixed"):
        # the capped run's StatNN may be under-trained: a StatNN-only run with more steps bounds the margin
        c = {r["model"]: r for r in control["mixed"]}.get("statnn")
        gmn = mixed.get("gmn")
        same_statnn = mixed.get("statnn", {}).get("epochs", src.get("epochs")) or 0
        if c and gmn and (control.get("epochs") or 0) > same_statnn:   # else the same run gave StatNN as much
            d = gmn["tau"][0] - c["tau"][0]
            rows.append(f"| mixed: the margin against StatNN trained longer ({control.get('epochs')} epochs, a "
                        f"separate command) | GMN {fmt(gmn['tau'])} ({src.get('epochs')} epochs) − StatNN "
                        f"{fmt(c['tau'])}: {d:+.3f} (across two commands and unequal budgets: a bound) | "
                        f"`{control.get('command', '')}` | {'met' if d >= 0.08 else 'not met'} |")
    T += rows or [f"| mixed: GMN ≥ StatNN + 0.08 τ | no GMN and StatNN rows of one command in "
                  f"results/{'metanet_mixed' if src is mixed_res else 'metanet'}.json yet (see metanet_mixed.md) "
                  f"| | not measured |"]

    # unseen architectures: no numeric target, transfer against native
    runs = res.get("part_runs", {}).get("unseen", [])
    for r in res.get("unseen") or []:
        i = run_of(runs, r["model"])
        T.append(f"| unseen ({res.get('unseen_zoo')}): τ trained on digits_cnn against trained on that zoo | "
                 f"{names.get(r['model'], r['model'])}: {fmt(r['transfer_tau'])} against {fmt(r['native_tau'])} "
                 f"({r['transfer_tau'][0] - r['native_tau'][0]:+.3f}) | {cmd(runs[i]) if i is not None else '?'} "
                 f"| no numeric target |")

    # INR classification: GMN >= NFN-NP (ours) + 2 points; scale/sign-aware GMN > GMN
    for name in ("metanet_inr", "metanet_inr_shapes"):
        inr_res = _load_result(name)
        if not inr_res or not inr_res.get("inr"):
            T.append(f"| INR ({name}): GMN ≥ NFN-NP + 2 points; aware GMN > GMN | not yet run | | not measured |")
            continue
        inr = {r["model"]: r for r in inr_res["inr"]}
        zoo = inr_res.get("inr_zoo")
        same = _same_run(inr_res, "inr", ["gmn", "nfn"])
        if same:
            d = 100 * (inr["gmn"]["acc"][0] - inr["nfn"]["acc"][0])
            T.append(f"| INR ({zoo}): GMN ≥ NFN-NP (ours) + 2 points | GMN {fmt(inr['gmn']['acc'])}, NFN-NP "
                     f"{fmt(inr['nfn']['acc'])}: {d:+.1f} points | {cmd(same[1])} | {'met' if d >= 2 else 'not met'} |")
        same = _same_run(inr_res, "inr", ["gmn", "gmn_canonical"])
        if same:
            d = 100 * (inr["gmn_canonical"]["acc"][0] - inr["gmn"]["acc"][0])
            T.append(f"| INR ({zoo}): scale/sign-aware GMN > GMN | aware {fmt(inr['gmn_canonical']['acc'])}, GMN "
                     f"{fmt(inr['gmn']['acc'])}: {d:+.1f} points | {cmd(same[1])} | {'met' if d > 0 else 'not met'} |")
        norm = {st.get("readout_norm") for st in inr_res.get("part_runs", {}).get("inr", [])}
        if norm - {None}:
            T.append(f"| INR ({zoo}): note | GMN and NGT there run with readout_norm={sorted(norm - {None})[0]!r}, "
                     "an option off by default | | |")

    # throughput: GMN's training networks/s >= the public NFN-HNP's, same run, on each device measured
    rows = res.get("throughput") or []
    for dev in dict.fromkeys(r.get("device", "cpu") for r in rows):
        thr = {r["model"]: r for r in rows if r.get("device", "cpu") == dev}
        if "gmn" not in thr or "nfn_public" not in thr:
            continue
        st = res.get("part_runs", {}).get("throughput", [{"command": res["command"]}])[-1]
        ok = thr["gmn"]["networks_per_s"] >= thr["nfn_public"]["networks_per_s"]
        where = "" if dev == "cpu" and len(rows) == len(thr) else f", {res.get('gpu', dev) if dev != 'cpu' else 'CPU'}"
        T.append(f"| training throughput (digits CNN{where}): GMN ≥ public NFN-HNP networks/s, same run | GMN "
                 f"{thr['gmn']['networks_per_s']:.0f}, public NFN-HNP {thr['nfn_public']['networks_per_s']:.0f} "
                 f"| {cmd(st)} | {'met' if ok else 'not met'} |")
    return T + [""]


def mixed_section(res: dict, names: dict, setting, regression_table) -> list[str]:
    """The mixed part's page section: τ table, margins against +0.08 (rows of one command
    only), τ per family, and the profile of a training step."""
    names = {**names, "gmn": "GMN" + (" (fast=True)" if any(st.get("gmn_fast") for st in
                                                            res.get("part_runs", {}).get("mixed", [])) else "")}
    size = (f"{res['mixed_networks']} networks of {res['mixed_architectures']} architectures (with kwargs), "
            if "mixed_networks" in res else "")
    fams = res.get("mixed_families", {})
    L = [f"## Mixed architectures ({res['mixed_zoo']}: {size}"
         + (", ".join(f"{n} {f}" for f, n in fams.items()) if fams else "small CNNs, tiny ResNets, transformers")
         + "; every saved step, test split)", ""]
    newer = _load_result("metanet_mixed")
    if res.get("mixed") and newer and newer.get("mixed") and newer.get("command") != res.get("command"):
        L += [f"Another run on this zoo, `{newer.get('command')}`, is on benchmarks/metanet_mixed.md; the targets "
              f"table of benchmarks/metanet.md shows both.", ""]
    if res.get("mixed"):
        L += [setting("mixed"), ""] + regression_table(res["mixed"], names, "mixed") + [""]
        by = {r["model"]: r for r in res["mixed"]}
        for m in [m for m in by if _graph_model(m)]:
            if "statnn" not in by:
                break
            same = _same_run(res, "mixed", ["statnn", m])
            if same is None:
                L.append(f"{names.get(m, m)}: no command trained it beside StatNN; no margin is read.  ")
                continue
            d = by[m]["tau"][0] - by["statnn"]["tau"][0]
            n = min(len(by[m]["taus"]), len(by["statnn"]["taus"]))
            bar = ("target for GMN ≥ +0.08" if RNORM_ALIASES.get(m, m) != "ngt"
                   else "the target names GMN; NGT at its bar of +0.08")
            L.append(f"{names.get(m, m)} − StatNN: {d:+.3f} τ ({len(by[m]['taus'])} seed(s), the same command; "
                     f"{bar}: {'met' if d >= 0.08 else 'not met'}"
                     + (f" on {n} seed(s); the target asks for 3" if n < 3 else "") + ").  ")
        for r in res["mixed"]:
            n = r.get("epochs")
            last = sum(b == n for b in r.get("best_epochs", [])) if n else 0
            if last:
                L.append(f"{names.get(r['model'], r['model'])}: the best validation epoch was the last ({n}) on "
                         f"{last} of {len(r['best_epochs'])} seed(s): it may still have been improving.  ")
        L += ["StatNN pools its statistics per (tensor role, depth bin); NFN does not apply.", ""]
    ft = res.get("mixed_family_tau")
    if ft:
        counts = res.get("mixed_family_test_checkpoints", {})
        fl = list(counts) or sorted({f for v in ft.values() for f in v})
        L += ["### τ per family (the same best checkpoints, the test split cut by family)", "",
              "| model | " + " | ".join(f"{f} ({counts.get(f, '?')} test checkpoints)" for f in fl) + " |",
              "|---|" + "---|" * len(fl)]
        for m, per in ft.items():
            L.append(f"| {names.get(m, m)} | " + " | ".join(fmt(mean_std(per.get(f, []))) for f in fl) + " |")
        L += ["", "The whole split's τ also ranks networks across families (a family's accuracies sit at their "
              "own level), so it is not the mean of these.", ""]
    pr = res.get("mixed_profile")
    if pr:
        L += ["### Where a training step's time goes", "",
              f"`{pr.get('command', '')}`, load average {pr['load']:.1f} at the start, one thread. Tracing every one "
              f"of the zoo's {pr['architectures']} architectures once (WeightSpace.of; cached per architecture for "
              f"the rest of the process, every seed and model): {pr['trace_s']:.0f} s. Then the first "
              f"{len(pr['batches'])} shuffled training batch(es) of 64 checkpoints: "
              + "; ".join(f"{b['architectures']} architectures, {b['nodes']:,} nodes, {b['edges']:,} edges of width "
                          f"{b['width']} ({100 * b['pad_fraction']:.0f}% of the edge feature slots padding)"
                          for b in pr["batches"]) + ".", "",
              f"Data path for those batches (every epoch: a mixed batch is rebuilt from the shards): stacking "
              f"{pr['stack_s']:.2f} s, ws.graphs {pr['graphs_s']:.2f} s, to_data_list {pr['datalist_s']:.2f} s, "
              f"collate {pr['collate_s']:.2f} s: {pr['data_networks_per_s']:.1f} networks/s the first time"
              + (f", {pr['data_warm_networks_per_s']:.1f} networks/s when read again (a later epoch: each "
                 "architecture's space and layout held by the zoo reader)" if "data_warm_networks_per_s" in pr else "")
              + ".", "",
              "| model | train networks/s (forward, backward, step) | eval networks/s |", "|---|---:|---:|"]
        pnames = {**names, "gmn": "GMN, readout_norm='batch' (default layers)",
                  "gmn_fast": "GMN, readout_norm='batch', fast=True (same parameters)",
                  "ngt": "NGT, readout_norm='batch'"}
        for r in pr["models"]:
            L.append(f"| {pnames.get(r['model'], r['model'])} | {r['train_networks_per_s']:.2f} | "
                     f"{r['eval_networks_per_s']:.2f} |")
        L.append("")
    return L


def write_markdown(res: dict, path: Path) -> None:
    L = ["# Metanetworks: conversion, accuracy prediction, INR classification, throughput", "",
         f"On {res['machine']}" + (f" and an {res['gpu']}" if res.get("gpu") else "")
         + f" ({res.get('threads', '?')} torch thread(s)), torch {res['torch']}, public nfn "
         f"{'installed' if res['nfn'] else 'not installed'}. Parts were run separately (each names its "
         f"command, settings and the load average when it started; the machine was shared); the latest, "
         f"`{res['command']}`, took {res['seconds']:.0f} s.", ""]
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
    def setting(part):
        out = []
        runs = res.get("part_runs", {}).get(part, [{"command": res["command"]}])
        for i, st in enumerate(runs):
            cap = f", at most {st['max_train']} training checkpoints" if st.get("max_train") else ""
            load = f", load average {st['machine_load']:.1f} at the start" if "machine_load" in st else ""
            which = f" ({st['models']})" if st.get("models") else ""
            norm = (f", GMN and NGT with readout_norm={st['readout_norm']!r} (pooled features standardised "
                    f"across networks)" if st.get("readout_norm") else "")
            num = f"({i + 1}) " if len(runs) > 1 else ""
            per = st.get("model_epochs") or {}
            eps = (f"{st.get('epochs', res['epochs'])} epochs" + (" (" + ", ".join(f"{m} {n}" for m, n in per.items())
                                                                  + " epochs)" if per else ""))
            if part == "throughput":   # timed steps: no seeds or epochs
                out.append(f"{num}`{st['command']}`{load.replace(', ', ': ', 1)}")
                continue
            out.append(f"{num}`{st['command']}`{which}: {st.get('seeds', res['seeds'])} seed(s), "
                       f"{eps}{cap}{norm}{load}")
        secs = sum(r.get("seconds", 0) for r in res.get(part) or [] if isinstance(r, dict))
        took = f"; {secs / 60:.0f} min of training in all" if secs else ""
        return "; then ".join(out) + took + "."

    def regression_table(rows, names, part=None):
        runs = res.get("part_runs", {}).get(part, []) if part else []
        many = len(runs) > 1   # rows of several commands: say which command measured each row
        own = any("epochs" in r for r in rows)   # rows trained for their own number of epochs (--model-epochs)
        T = ["| model | Kendall τ | R² | seeds | train networks/s |" + (" epochs |" if own else "") + " best epochs |"
             + (" command |" if many else ""),
             "|---|---|---|---:|---:|" + ("---:|" if own else "") + "---|" + ("---:|" if many else "")]
        for r in rows:
            src = run_of(runs, r["model"]) if many else None
            T.append(f"| {names.get(r['model'], r['model'])} | {fmt(r['tau'])} | {fmt(r['r2'])} | {len(r['taus'])} | "
                     f"{r['train_networks_per_s'][0]:.0f} |" + (f" {r.get('epochs', '?')} |" if own else "")
                     + f" {', '.join(map(str, r.get('best_epochs', [])))} |"
                     + (f" {'?' if src is None else src + 1} |" if many else ""))
        return T

    names = {"nfn": "NFN-HNP (ours)", "nfn_public": "NFN-HNP (public nfn)", "statnn": "StatNN", "gmn": "GMN",
             "gmn_canonical": "GMN, scale/sign-aware", "ngt": "NGT", "gmn_wide": f"GMN, hidden {WIDE}",
             "gmn_pna": "GMN, PNA readout", "gmn_hybrid": "GMN + weight statistics (hybrid: concatenated)",
             "gmn_pna_hybrid": "GMN, PNA readout + weight statistics (hybrid: concatenated)",
             "gmn_maggr": "GMN, mean/max/std aggregation",
             "gmn_maggr_pna_hybrid": "GMN, mean/max/std aggregation, PNA readout + weight statistics (hybrid)",
             "gmn_hybrid_sum": "GMN + StatNN (hybrid: outputs summed)",
             "gmn_hybrid_sum_clip": "GMN + StatNN (hybrid: outputs summed; statistics clipped at ±10 deviations)",
             "gmn_pna_hybrid_sum": "GMN, PNA readout + StatNN (hybrid: outputs summed)",
             "gmn_rnorm": "GMN, readout_norm='batch'", "ngt_rnorm": "NGT, readout_norm='batch'"}
    if path.stem == "metanet":
        L += targets_section(res) + time_section(res)
    if res.get("accuracy"):
        L += [f"## Accuracy prediction ({res['accuracy_zoo']}, every saved step, test split)", "",
              setting("accuracy"), ""] + regression_table(res["accuracy"], names, "accuracy")
        by = {r["model"]: r["tau"][0] for r in res["accuracy"]}
        # margins only between rows of one command: the latest that ran StatNN
        runs = [st for st in res.get("part_runs", {}).get("accuracy", [])
                if not st.get("models") or "statnn" in st["models"].split(",")]
        same = set(runs[-1]["models"].split(",")) if runs and runs[-1].get("models") else set(by)
        by = {m: t for m, t in by.items() if m in same}
        gmns = [m for m in by if m == "gmn" or m in GMN_VARIANTS or m == "gmn_wide"]
        if "statnn" in by and gmns:
            L += ["", f"Margins within one command (`{runs[-1]['command']}`):  " if runs else ""]
            for m in gmns:
                L.append(f"{names.get(m, m)} − StatNN: {by[m] - by['statnn']:+.3f} τ (target ≥ +0.02)"
                         + (f"; − public NFN-HNP: {by[m] - by['nfn_public']:+.3f} (target ≥ 0)"
                            if "nfn_public" in by else "") + ".  ")
        L.append("")
    if res.get("mixed") or res.get("mixed_profile"):
        L += mixed_section(res, names, setting, regression_table)
    if res.get("unseen"):
        n = res["unseen"][0]["test_checkpoints"]
        L += [f"## Unseen architectures ({res['unseen_zoo']}: digits CNNs of 16/24/32 channels and 3/4 "
              f"convolutions, never 16 × 3; its test split, {n} checkpoints)", "", setting("unseen"), "",
              "| model | τ, trained on digits_cnn | τ, trained on the wide zoo | R², trained on digits_cnn "
              "| R², trained on the wide zoo |", "|---|---|---|---|---|"]
        for r in res["unseen"]:
            L.append(f"| {names.get(r['model'], r['model'])} | {fmt(r['transfer_tau'])} | {fmt(r['native_tau'])} | "
                     f"{fmt(r['transfer_r2'])} | {fmt(r['native_r2'])} |")
        L += ["", "Trained on digits_cnn: the accuracy part's best checkpoint of each seed, never shown a "
              "wide network.", ""]
    if res.get("inr"):
        L += [f"## INR classification ({res['inr_zoo']}, test accuracy)", "", setting("inr"), "",
              "| model | accuracy |", "|---|---|"]
        inr_names = {**names, "nfn": "NFN-NP (ours)", "nfn_public": "NFN-NP (public nfn)"}
        for r in res["inr"]:
            L.append(f"| {inr_names.get(r['model'], r['model'])} | {fmt(r['acc'])} |")
        acc = {r["model"]: r["acc"][0] for r in res["inr"]}
        if len(res.get("part_runs", {}).get("inr", [])) == 1:   # margins only between rows of one command
            L.append("")
            if "gmn" in acc and "nfn" in acc:
                L.append(f"GMN − NFN-NP (ours): {100 * (acc['gmn'] - acc['nfn']):+.1f} points (target ≥ +2).  ")
            if "gmn" in acc and "gmn_canonical" in acc:
                L.append(f"Scale/sign-aware GMN − GMN: {100 * (acc['gmn_canonical'] - acc['gmn']):+.1f} points "
                         f"(target > 0).  ")
        digits = Path(res["inr_zoo"]).name in ("digits_siren", "quick_digits_siren")
        if digits and any(st.get("readout_norm") for st in res.get("part_runs", {}).get("inr", [])):
            L += ["", "readout_norm='batch' (GMN's and NGT's option, off by default): the pooled readout "
                  "features standardised across the networks of a batch (running statistics at evaluation). "
                  "Without it the pooled features of these SIRENs differ by a few percent from network to "
                  "network, plain GMN and NGT do not fit even the training split (training loss stays at "
                  "ln 10) and test at chance: 0.076 ± 0.026 and 0.063 ± 0.003 in the run this one replaces "
                  "(`--models statnn,nfn_public,gmn,ngt`, 3 seeds, 6 epochs)."]
        build = res.get("inr_zoo_build") or ("metanet zoo build --recipe digits_siren --n 1797 --options "
                                             "'{\"views\": 1}'")
        what = ("every digits image resampled to 16x16, DWSNets' SIREN init; with the paper's SIREN init every "
                "model here stays at chance: see zoo/recipes.py" if digits else
                "SIRENs 2-32-32-1 fitted to synthetic 16x16 images of 10 shape classes (zoo/data.py make_shapes), "
                "DWSNets' SIREN init, as digits_siren's" if "shapes_siren" in res["inr_zoo"] else "")
        L += ["", f"Batches of {INR_BATCH}; chance is 0.10; the split is by image (one INR per image). The zoo: "
              f"`{build}`" + (f" ({what})" if what else "") + ".", ""]
    if res.get("throughput"):
        gpu_rows = any(r.get("device", "cpu") != "cpu" for r in res["throughput"])
        L += ["## Training throughput and memory (digits CNN, batches of 64, hidden 32, 3 layers)", "",
              setting("throughput"), "",
              *(["| model | device | networks/s | × its CPU run | peak extra memory (MB) | parameters |",
                 "|---|---|---:|---:|---:|---:|"] if gpu_rows else
                ["| model | networks/s | peak extra memory (MB) | parameters |", "|---|---:|---:|---:|"])]
        cpu_rate = {r["model"]: r["networks_per_s"] for r in res["throughput"] if r.get("device", "cpu") == "cpu"}
        for r in res["throughput"]:
            dev = r.get("device", "cpu")
            peak = "n/a" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
            ratio = (f"{r['networks_per_s'] / cpu_rate[r['model']]:.1f}" if dev != "cpu" and r["model"] in cpu_rate
                     else "-")
            where = f" {dev if dev == 'cpu' else res.get('gpu', dev)} | " if gpu_rows else " "
            L.append(f"| {names.get(r['model'], r['model'])} |{where}{r['networks_per_s']:.0f} | "
                     + (f"{ratio} | " if gpu_rows else "") + f"{peak} | {r['params']:,} |")
        L += ["", "Each model in a fresh process, one thread; peak extra memory: on the CPU the peak resident "
              "set (VmHWM, reset through /proc/self/clear_refs) during the first and the timed training steps, "
              "less the resident set just before them (gradients, optimizer state and activations); on a GPU "
              "the peak of allocated GPU memory above what the model and batches held before the first step.",
              ""]
    for note in res.get("notes", []):
        L += [note, ""]
    if any(r.get("model") == "gmn_canonical" for part in ("accuracy", "mixed", "unseen", "inr")
           for r in res.get(part) or [] if isinstance(r, dict)):
        L += ["Scale/sign-aware GMN: canonical forms under the scaling and sign-flip groups of each batch's weight "
              "space. A batch holds networks of one set of groups: the ReLU and tanh CNNs of digits_cnn share a graph "
              "but go in separate batches (before that fix a batch was canonicalised by its first network's groups; "
              "the digits-CNN row then read 0.372 ± 0.170).",
              ""]
    path.write_text("\n".join(L))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small zoos, 1 seed, 1 epoch")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--parts", default="convert,accuracy,mixed,unseen,inr,throughput")
    ap.add_argument("--max-train", type=int, default=None, help="cap on training checkpoints per task")
    ap.add_argument("--models", default=None,
                    help="accuracy and inr parts: only these models (comma-separated), the JSON keeps the other "
                         "rows; mixed and unseen parts: these models instead of their defaults (statnn,gmn,ngt and "
                         "gmn,ngt; the unseen part skips models that read one architecture only)")
    ap.add_argument("--readout-norm", default="none", choices=["none", "batch"],
                    help="GMN and NGT (and GMN variants) in the parts run: 'batch' standardises their pooled "
                         "readout features across networks (metanet.nn.GMN's readout_norm); default none")
    ap.add_argument("--inr-zoo", default="digits_siren", choices=sorted(INR_ZOOS),
                    help="inr part: the INR zoo (recipe name; built under zoos/ when absent); with shapes_siren "
                         "give --name too (e.g. metanet_inr_shapes), so as not to mix its rows with digits ones")
    ap.add_argument("--gmn-fast", action="store_true",
                    help="GMN and its variants with fast=True (metanet.nn.GMN: the same function to float rounding, "
                         "faster layers); default off")
    ap.add_argument("--mixed-zoo", default=None, help="mixed part: this packed zoo instead of zoos/mixed")
    ap.add_argument("--mixed-profile-batches", type=int, default=1,
                    help="mixed part: profile the data path and every model's step on this many training batches "
                         "first (0: skip)")
    ap.add_argument("--model-epochs", default=None,
                    help="mixed part: epochs per model, e.g. statnn=24,gmn=4 (models not named: --epochs); each "
                         "model's best epoch is still chosen on the validation split; default: --epochs for all")
    ap.add_argument("--throughput-steps", type=int, default=None)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)   # with --throughput-one
    ap.add_argument("--throughput-devices", default="cpu",
                    help="throughput part: comma-separated devices, each model measured on each (e.g. cpu,cuda)")
    ap.add_argument("--big", action="store_true", help="also convert 10,000 digits CNNs")
    ap.add_argument("--name", default=None, help="output name (default metanet, or metanet_quick)")
    ap.add_argument("--pages-only", action="store_true",
                    help="run nothing: rewrite benchmarks/<name>.md from its JSON (e.g. after another page's run "
                         "changed the targets section of metanet.md)")
    ap.add_argument("--throughput-one", default=None, help=argparse.SUPPRESS)   # one model, in a subprocess
    ap.add_argument("--zoo", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.throughput_one:
        print(json.dumps(throughput_one(Path(args.zoo), args.throughput_one, args.throughput_steps, args.device)))
        return 0
    if args.pages_only:
        name = args.name or "metanet"
        res = _load_result(name)
        if res is None:
            raise SystemExit(f"benchmarks/results/{name}.json does not exist")
        write_markdown(res, ROOT / "benchmarks" / f"{name}.md")
        print(f"wrote benchmarks/{name}.md from benchmarks/results/{name}.json")
        return 0
    global READOUT_NORM, GMN_FAST
    READOUT_NORM = None if args.readout_norm == "none" else args.readout_norm
    GMN_FAST = args.gmn_fast
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 8)
    parts = set(args.parts.split(","))
    if args.model_epochs and "mixed" not in parts:
        raise SystemExit("--model-epochs applies to the mixed part only: add mixed to --parts")
    model_epochs = parse_model_epochs(args.model_epochs, args.models.split(",") if args.models else MIXED_MODELS)
    t0 = time.perf_counter()
    res = {"command": "python benchmarks/metanetworks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
           "nfn": HAVE_NFN, "seeds": seeds, "epochs": epochs, "max_train": args.max_train}
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, os.cpu_count() or 1))
    res["threads"] = torch.get_num_threads()
    name = args.name or ("metanet_quick" if args.quick else "metanet")
    # parts run separately merge into one JSON: keep what other runs measured
    prev = ROOT / "benchmarks" / "results" / f"{name}.json"
    if prev.exists() and not args.quick:
        old = json.loads(prev.read_text())
        keep = {k: v for k, v in old.items() if k not in res and k != "seconds"}
        res = {**keep, **res}
    for part in parts:   # a run of some accuracy models (--models) adds its command to the part's
        st = {"command": res["command"], "seeds": seeds, "epochs": epochs, "max_train": args.max_train,
              "machine_load": os.getloadavg()[0], "models": args.models if part != "throughput" else None,
              "readout_norm": READOUT_NORM if part != "throughput" else None}
        runs = res.setdefault("part_runs", {})
        if part == "mixed":
            st["gmn_fast"] = GMN_FAST
            if model_epochs:
                st["model_epochs"] = model_epochs
        runs[part] = (runs.get(part, []) if part in ("accuracy", "mixed", "inr", "unseen") and args.models else []) + [st]

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
        models = args.models.split(",") if args.models else None
        res["accuracy"] = [r for r in res.get("accuracy", []) if models and r["model"] not in models]
        accuracy_part(cnn, seeds, epochs, args.max_train, res["accuracy"],
                      **({"models": models} if models else {}))
        save()
    if "mixed" in parts:
        mixed = Path(args.mixed_zoo).resolve() if args.mixed_zoo else ensure_zoo("mixed", 60 if args.quick else 500,
                                                                                 args.quick)
        res["mixed_zoo"] = str(mixed.relative_to(ROOT)) if mixed.is_relative_to(ROOT) else str(mixed)
        from zoo import Zoo

        mz = Zoo.open(mixed)
        res["mixed_networks"] = len({mz.record(i)["job"] for i in range(len(mz))})
        res["mixed_architectures"] = len({json.dumps([mz.record(i)["arch"], mz.record(i)["arch_kwargs"]], sort_keys=True)
                                          for i in range(len(mz))})
        nets = {}
        for r in mz.records:
            nets.setdefault(r["job"], _family(r))
        res["mixed_families"] = {f: list(nets.values()).count(f) for f in sorted(set(nets.values()))}
        if args.mixed_profile_batches:
            res["mixed_profile"] = mixed_profile(mixed, args.mixed_profile_batches)
            res["mixed_profile"]["command"] = res["command"]
            save()
        models = args.models.split(",") if args.models else list(MIXED_MODELS)
        res["mixed"] = [r for r in res.get("mixed", []) if args.models and r["model"] not in models]
        for model in models:   # saved after every seed: a run stopped midway keeps the seeds it finished
            results = []
            ep = model_epochs.get(model, epochs)
            for seed in range(seeds):
                results.append(_regress(mixed, model, seed, ep, args.max_train, "mixed"))
                r = results[-1]
                print(f"mixed {model} seed {seed}: τ {r.test['tau']:.4f} R² {r.test['r2']:.4f} "
                      f"(best epoch {r.best_epoch}, {r.seconds:.0f} s)", flush=True)
                res["mixed"] = [x for x in res["mixed"] if x["model"] != model] + [
                    {**_regression_row(model, results), "epochs": ep}]
                counts, taus = mixed_families(mixed, model, seed)
                per = res.setdefault("mixed_family_tau", {})
                per[model] = {f: (per.get(model, {}).get(f, []) if seed else []) + [t] for f, t in taus.items()}
                res["mixed_family_test_checkpoints"] = counts
                save()
    if "unseen" in parts:
        cnn = cnn or ensure_zoo("digits_cnn", 100 if args.quick else 1000, args.quick)
        wide = ensure_zoo("digits_cnn_wide", 60 if args.quick else 300, args.quick)
        res["unseen_zoo"] = str(wide.relative_to(ROOT))
        models = args.models.split(",") if args.models else None   # --models: the other rows are kept
        res["unseen"] = [r for r in res.get("unseen", []) if models and r["model"] not in models]
        unseen_part(cnn, wide, seeds, epochs, args.max_train, res["unseen"],
                    **({"models": args.models.split(",")} if args.models else {}))
        save()
    if "inr" in parts:
        n_inr, inr_opts = INR_ZOOS[args.inr_zoo]
        siren = ensure_zoo(args.inr_zoo, 100 if args.quick else n_inr, args.quick, inr_opts)
        if res.get("inr") and res.get("inr_zoo") not in (None, str(siren.relative_to(ROOT))):
            if args.models:   # the rows kept under --models would be another zoo's
                raise SystemExit(f"benchmarks/results/{name}.json holds INR rows of {res['inr_zoo']}, not of "
                                 f"{siren.relative_to(ROOT)}: give another --name")
        res["inr_zoo"] = str(siren.relative_to(ROOT))
        res["inr_zoo_build"] = zoo_build_line(siren)
        models = args.models.split(",") if args.models else None
        res["inr"] = [r for r in res.get("inr", []) if models and r["model"] not in models]
        inr_part(siren, seeds, epochs, args.max_train, res["inr"], **({"models": models} if models else {}))
        save()
    if "throughput" in parts:
        res["throughput"] = throughput_part(cnn, args.throughput_steps or (5 if args.quick else 30),
                                            args.throughput_devices.split(","))
        if any(r["device"] != "cpu" for r in res["throughput"]):
            res["gpu"] = torch.cuda.get_device_name()
    save()
    print(f"wrote benchmarks/{name}.md ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
