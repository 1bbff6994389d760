"""The quickstart: every part of metanet once, on built-in data, in a few minutes on a CPU.

>>> from tasks.quickstart import QuickstartConfig, run
>>> summary = run(QuickstartConfig(out="out/quickstart"))

or ``metanet quickstart``. Six steps, each a short version of a task the toolkit does at
full size (the README names the commands and benchmarks behind each):

1. ``weights``    trace a small ResNet: its neuron groups, every symmetry checked
                  numerically (``ws.verify``), the parameter graph converted back bit for bit.
2. ``zoo``        train a zoo of small CNNs on scikit-learn's 8x8 digits (``zoo.build``).
3. ``metanet``    predict each zoo network's test accuracy from its weights: a GMN against
                  StatNN, Kendall's tau on networks never trained on (``tasks.predict_accuracy``).
4. ``augment``    a random permutation and scaling of zoo networks keep their outputs; two
                  networks aligned (``ws.align``) have a lower loss barrier between them.
5. ``ghn``        meta-train a graph hypernetwork on sampled architectures, then initialise
                  architectures it never saw: accuracy with no training and after one epoch,
                  against the architectures' own initialisation (``tasks.predict_init``).
6. ``prune``      meta pruning: a GMN edits networks to be easy to prune, then structured
                  pruning to 2x fewer FLOPs, against magnitude pruning (``tasks.meta_prune``).

Each step's numbers go to ``out/summary.json`` and ``out/report.md`` as soon as the step
ends, so an interrupted or failed run keeps every finished step; the zoo build resumes
where it stopped. ``fast=True`` shrinks every step to a smoke run (seconds; the numbers
then mean nothing).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["QuickstartConfig", "run", "STEPS"]

STEPS = ("weights", "zoo", "metanet", "augment", "ghn", "prune")
GHN_TEST_SEED0 = 3_000_000   # the unseen architectures: sampler seeds from here on


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = "out/quickstart"
    steps: tuple[str, ...] = STEPS
    fast: bool = False             # smoke run: tiny sizes everywhere
    zoo_networks: int = 100        # digits CNNs in the zoo (6 checkpoints each)
    metanet_epochs: int = 4
    ghn_steps: int = 300           # meta-training steps of the GHN
    ghn_test_archs: int = 10
    prune_meta_steps: int = 150
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        bad = [s for s in self.steps if s not in STEPS]
        if bad or not self.steps:
            raise ValueError(f"steps must be a non-empty selection of {', '.join(STEPS)}; got {list(self.steps)}")
        for name in ("zoo_networks", "metanet_epochs", "ghn_steps", "ghn_test_archs", "prune_meta_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if "metanet" in self.steps or "augment" in self.steps:
            if self.sizes()["zoo_networks"] < 10:
                raise ValueError("the metanet and augment steps need a zoo of at least 10 networks "
                                 f"(zoo_networks={self.zoo_networks})")

    def sizes(self) -> dict:
        """The sizes each step runs at (``fast`` shrinks them)."""
        if self.fast:
            # every architecture the GHN meets is traced once (about a second each): few of them
            return dict(zoo_networks=max(10, min(self.zoo_networks, 12)), metanet_epochs=1, ghn_steps=2,
                        ghn_meta_batch=2, ghn_val_archs=1, ghn_test_archs=1, prune_meta_steps=3, net_steps=20,
                        prune_nets=(2, 1, 1))
        return dict(zoo_networks=self.zoo_networks, metanet_epochs=self.metanet_epochs, ghn_steps=self.ghn_steps,
                    ghn_meta_batch=4, ghn_val_archs=4, ghn_test_archs=self.ghn_test_archs,
                    prune_meta_steps=self.prune_meta_steps, net_steps=200, prune_nets=(8, 3, 3))


@dataclass
class _Run:
    cfg: QuickstartConfig
    out: Path
    say: Callable[[str], None]
    summary: dict = field(default_factory=dict)

    @property
    def zoo_dir(self) -> Path:
        return self.out / "zoo"


# ------------------------------------------------------------------------------------ steps
def _weights(r: _Run) -> dict:
    """Trace the built-in small ResNet; verify its symmetries; round-trip its graph."""
    from metanet import WeightSpace
    from metanet.examples import EXAMPLES

    model, x = EXAMPLES["resnet"]()
    t0 = time.perf_counter()
    ws = WeightSpace.of(model, x)
    trace_s = time.perf_counter() - t0
    report = ws.verify(model, x, n=3)
    sd = model.state_dict()
    graph = ws.graph(sd)
    back = ws.state_dict(graph)
    exact = all(torch.equal(back[k], v) for k, v in sd.items() if k in back) and set(ws.weights) <= set(back)
    r.say(ws.summary().splitlines()[0])
    return {"model": "built-in small ResNet (metanet convert --model resnet)", "parameters": ws.num_params,
            "ops": len(ws.op_graph.nodes), "groups": len(ws.groups),
            "groups_with_scaling": sum(bool(g.scaling) for g in ws.groups),
            "groups_with_sign_flips": sum(bool(g.sign) for g in ws.groups),
            "verify_max_rel_err": {k: float(v) for k, v in report.max_rel_err.items()},
            "verify_shapes": len(report.shapes), "graph_nodes": int(graph.num_nodes),
            "graph_edges": int(graph.num_edges),
            "graph_round_trip_exact": bool(exact), "trace_s": round(trace_s, 2)}


def _zoo(r: _Run) -> dict:
    """A zoo of small CNNs on 8x8 digits (resumes an interrupted build)."""
    from zoo.build import build, make_executor

    n = r.cfg.sizes()["zoo_networks"]
    options = {"steps": [0, 1, 2]} if r.cfg.fast else {}
    summary = build("digits_cnn", n, r.zoo_dir, seed=r.cfg.seed, executor=make_executor("batched"),
                    options=options, progress=r.cfg.progress)
    from zoo import Zoo

    zoo = Zoo.open(r.zoo_dir)
    acc = zoo.targets("test_acc")
    return {"path": str(r.zoo_dir), "networks": n, "checkpoints": len(zoo),
            "test_acc_min": float(acc.min()), "test_acc_max": float(acc.max()),
            "build_s": round(float(summary.get("seconds", 0.0)), 1)}


def _metanet(r: _Run) -> dict:
    """GMN against StatNN, predicting test accuracy from weights (tau on held-out networks)."""
    from tasks.predict_accuracy import AccuracyConfig
    from tasks.predict_accuracy import run as fit

    out = {}
    for kind in ("statnn", "gmn"):
        cfg = AccuracyConfig(zoo=str(r.zoo_dir), model=kind, out=str(r.out / f"metanet_{kind}"),
                             epochs=r.cfg.sizes()["metanet_epochs"], seed=r.cfg.seed, progress=r.cfg.progress,
                             readout_norm="batch" if kind == "gmn" else None)
        res = fit(cfg)
        out[kind] = {"tau": float(res.test["tau"]), "r2": float(res.test["r2"]), "best_epoch": res.best_epoch,
                     "train_networks_per_s": round(float(res.train_networks_per_s), 1),
                     "seconds": round(res.seconds, 1), "dir": cfg.out}
        r.say(f"  {kind}: Kendall tau {out[kind]['tau']:.3f} on held-out networks")
    out["plot"] = str(Path(out["gmn"]["dir"]) / "predicted_vs_true.png")
    return out


def _augment(r: _Run) -> dict:
    """Exact augmentations keep outputs; alignment lowers the loss barrier."""
    from metanet.augment import RandomPermutation, RandomScaling
    from metanet.space.align import loss_barrier
    from zoo import Zoo
    from zoo.data import load_dataset

    zoo = Zoo.open(r.zoo_dir)
    last = max(zoo.steps)
    final = zoo.where(step=last)
    # networks of one weight space: the zoo mixes ReLU and tanh CNNs (take the ReLU ones,
    # which also have scaling symmetries); dropout has no parameters and is ignored
    def arch(i):
        rec = final.record(i)
        return rec["arch"], {k: v for k, v in rec["arch_kwargs"].items() if k != "dropout"}

    kinds = [arch(i) for i in range(len(final))]
    kw0 = next((k for k in kinds if k[1].get("activation") == "relu"), kinds[0])
    same = [i for i, k in enumerate(kinds) if k == kw0]
    if len(same) < 2:
        raise ValueError(f"the zoo holds fewer than two networks of {kw0}: build a larger zoo")
    a_i, b_i = same[0], same[1]
    model, ws = final.model(a_i), final.weight_space(a_i)
    data = load_dataset("digits")
    stack = final.stacked(same[:4])
    ref = [_logits(model, {k: v[j] for k, v in stack.items()}, data) for j in range(len(same[:4]))]
    errs = {}
    for T in (RandomPermutation, RandomScaling):
        try:
            t = T(ws, seed=r.cfg.seed)
        except ValueError as err:   # e.g. no scaling symmetry in this architecture
            errs[T.__name__] = f"not offered: {err}"
            continue
        moved = t(stack)
        errs[T.__name__] = max(float((_logits(model, {k: v[j] for k, v in moved.items()}, data) - ref[j]).norm()
                                     / ref[j].norm()) for j in range(len(ref)))
    a, b = final.state_dict(a_i), final.state_dict(b_i)
    b_aligned = ws.permute(b, ws.align(a, b))

    def barrier(other):
        return loss_barrier(ws, model, a, other, data.x_test, data.y_test, calib=data.x_train)

    return {"architecture": kw0[0], "arch_kwargs": kw0[1], "networks_transformed": len(ref),
            "max_rel_output_change": errs, "barrier_before": barrier(b), "barrier_aligned": barrier(b_aligned)}


def _logits(model, sd, data) -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(sd)
    with torch.no_grad():
        return m.eval()(data.x_test)


def _finetune(model, data, steps: int, seed: int) -> float:
    """Adam (lr 1e-3, batch 64) for ``steps`` steps, then test accuracy."""
    from tasks.predict_init import accuracy

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(data.y_train), (64,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return accuracy(model, None, data.x_test, data.y_test, data.x_train[:512])


def _ghn(r: _Run) -> dict:
    """Meta-train a GHN; initialise unseen architectures; compare with their own init."""
    from metanet.hyper import GHN
    from tasks.predict_init import PredictInitConfig, accuracy, build_arch, load_data, sample_archs
    from tasks.predict_init import run as meta_train
    from zoo.models import arch_key

    sizes = r.cfg.sizes()
    n_archs = 100
    cfg = PredictInitConfig(dataset="digits", out=str(r.out / "ghn"), steps=sizes["ghn_steps"],
                            meta_batch=sizes["ghn_meta_batch"], n_archs=n_archs, val_archs=sizes["ghn_val_archs"],
                            eval_every=max(1, sizes["ghn_steps"]),
                            ckpt_every=max(1, min(100, sizes["ghn_steps"])), seed=r.cfg.seed,
                            progress=r.cfg.progress,
                            resume=False)   # each run of the step meta-trains anew: a GHN left in the folder
                                            # by an earlier version (other defaults) must not fail the step
    res = meta_train(cfg)
    ghn = GHN.from_pretrained(res.last_dir).eval()
    data = load_data("digits")
    seen = {arch_key(*a) for a in sample_archs("digits", range(n_archs))}
    tests, s = [], GHN_TEST_SEED0
    while len(tests) < sizes["ghn_test_archs"]:
        arch = sample_archs("digits", [s])[0]
        if arch_key(*arch) not in seen:
            tests.append((s, arch))
        s += 1
    epoch = math.ceil(len(data.y_train) / 64)
    rows = []
    for s, arch in tests:
        own = build_arch(arch, seed=s)
        predicted = copy.deepcopy(own)
        with torch.no_grad():
            pred = ghn.load(predicted)
        row = {"arch": arch[0], "seed": s, "predicted_tensors": len(pred), "kept_own_init": len(pred.unpredicted)}
        for name, m in (("own_init", own), ("ghn", predicted)):
            row[f"{name}_acc"] = accuracy(m, None, data.x_test, data.y_test, data.x_train[:512])
            row[f"{name}_acc_1_epoch"] = _finetune(m, data, epoch, seed=s)
        rows.append(row)
        r.say(f"  {arch[0]:>16s}: no training {row['own_init_acc']:.3f} own init, {row['ghn_acc']:.3f} GHN; "
              f"one epoch {row['own_init_acc_1_epoch']:.3f} / {row['ghn_acc_1_epoch']:.3f}")
    mean = {k: float(sum(x[k] for x in rows) / len(rows))
            for k in ("own_init_acc", "ghn_acc", "own_init_acc_1_epoch", "ghn_acc_1_epoch")}
    plot = _ghn_plot(rows, r.out / "ghn_unseen.png")
    return {"meta_steps": cfg.steps, "meta_training_s": round(res.seconds, 1), "train_archs": n_archs,
            "test_archs": len(rows), "one_epoch_steps": epoch, "mean": mean, "rows": rows, "plot": plot,
            "ghn_dir": res.last_dir}


def _ghn_plot(rows, path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    xs = range(len(rows))
    for ax, suffix, title in ((axes[0], "acc", "no training"), (axes[1], "acc_1_epoch", "after one epoch")):
        ax.bar([x - 0.2 for x in xs], [row[f"own_init_{suffix}"] for row in rows], 0.4, label="own init")
        ax.bar([x + 0.2 for x in xs], [row[f"ghn_{suffix}"] for row in rows], 0.4, label="GHN")
        ax.set_xticks(list(xs), [row["arch"].replace("tiny_", "") for row in rows], rotation=60, fontsize=7)
        ax.set_title(f"unseen architectures: {title}")
    axes[0].set_ylabel("test accuracy (digits)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _prune(r: _Run) -> dict:
    """Meta pruning (GMN edit, strength chosen on validation networks) against magnitude."""
    from tasks.meta_prune import MetaPruneConfig
    from tasks.meta_prune import run as meta_prune

    sizes = r.cfg.sizes()
    n_train, n_test, n_val = sizes["prune_nets"]
    cfg = MetaPruneConfig(n_train_nets=n_train, n_test_nets=n_test, n_val_nets=n_val, net_steps=sizes["net_steps"],
                          meta_steps=sizes["prune_meta_steps"], meta_batch=min(3, n_train), lam=1e-2, lr=5e-4,
                          open_gate=True, normalize=True, sparsity="polarize", allocation="global_max",
                          strength_grid=(0.0, 0.5, 1.0, 2.0), finetune_steps=30, speedups=(2.0,),
                          seeds=(r.cfg.seed,), methods=("magnitude", "meta (strength chosen)"),
                          progress=r.cfg.progress, out=str(r.out / "prune"))
    res = meta_prune(cfg, log=lambda msg: None)
    out = {"networks": {"meta_train": n_train, "test": n_test, "validation": n_val}, "target_flop_reduction": 2.0}
    for method in ("magnitude", "meta (strength chosen)"):
        rows = [x for x in res.rows if x["method"] == method]
        out[method] = {"accuracy": res.mean(method, 2.0),
                       "flop_reduction": float(sum(x["flops_reduction"] for x in rows) / max(len(rows), 1))}
    out["chosen_strength"] = [s["chosen"] for s in res.strength]
    out["table"] = str(r.out / "prune" / "results.md")
    return out


_STEP_FUNCS = {"weights": _weights, "zoo": _zoo, "metanet": _metanet, "augment": _augment, "ghn": _ghn,
               "prune": _prune}
_TITLES = {"weights": "trace a small ResNet, verify its symmetries, round-trip its parameter graph",
           "zoo": "train a zoo of small CNNs on 8x8 digits",
           "metanet": "predict the zoo networks' accuracy from their weights (GMN against StatNN)",
           "augment": "exact augmentations and alignment on zoo networks",
           "ghn": "meta-train a GHN, initialise architectures it never saw",
           "prune": "prune networks via a learned metanetwork (against magnitude pruning)"}


# ---------------------------------------------------------------------------------- report
def _fmt(x, nd=3) -> str:
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def report(summary: dict) -> str:
    """The Markdown report of the steps in ``summary`` (finished ones; a failed one says so)."""
    lines = ["# metanet quickstart", "",
             f"Configuration: `{json.dumps(summary.get('config', {}))}`", ""]
    earlier = summary.get("earlier_steps", {})
    s = {**earlier, **summary.get("steps", {})}

    def head(name: str, title: str) -> list[str]:
        if name in summary.get("steps", {}):
            return [title, ""]
        return [title, "", "*From an earlier run in this folder (not rerun this time).*", ""]

    if "weights" in s:
        w = s["weights"]
        lines += head("weights", "## 1. Weight space of a small ResNet") + [
                  f"{w['parameters']:,} parameters, {w['ops']} ops, {w['groups']} neuron groups "
                  f"({w['groups_with_scaling']} with positive scaling, {w['groups_with_sign_flips']} with sign flips). "
                  f"Every symmetry checked on {w['verify_shapes']} input shapes, largest relative output change: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in w["verify_max_rel_err"].items())
                  + f". Parameter graph: {w['graph_nodes']} nodes, {w['graph_edges']} edges; converted back bit for "
                  f"bit: {w['graph_round_trip_exact']}.", ""]
    if "zoo" in s:
        z = s["zoo"]
        lines += head("zoo", "## 2. A checkpoint zoo") + [
                  f"{z['networks']} small CNNs trained on 8x8 digits, {z['checkpoints']} checkpoints in `{z['path']}` "
                  f"(test accuracy {z['test_acc_min']:.3f} to {z['test_acc_max']:.3f}).", ""]
    if "metanet" in s:
        m = s["metanet"]
        lines += head("metanet", "## 3. Predicting accuracy from weights (held-out networks)") + [
                  "| model | Kendall tau | R2 | best epoch | train networks/s |", "|---|---:|---:|---:|---:|"]
        for kind, label in (("statnn", "StatNN (per-tensor statistics)"), ("gmn", "GMN (graph metanetwork)")):
            x = m[kind]
            lines.append(f"| {label} | {x['tau']:.3f} | {x['r2']:.3f} | {x['best_epoch']} | "
                         f"{x['train_networks_per_s']} |")
        lines += ["", f"GMN predictions against the truth: `{m['plot']}`.", ""]
    if "augment" in s:
        a = s["augment"]
        lines += head("augment", "## 4. Weight-space augmentation and alignment") + [
                  f"{a['networks_transformed']} zoo networks ({a['architecture']}), largest relative change of "
                  "their test-set logits: " + ", ".join(f"{k} {_fmt(v, 1) if not isinstance(v, float) else f'{v:.1e}'}"
                                                         for k, v in a["max_rel_output_change"].items())
                  + f". Loss barrier between two networks: {a['barrier_before']:.3f} as trained, "
                  f"{a['barrier_aligned']:.3f} after aligning the second to the first.", ""]
    if "ghn" in s:
        g = s["ghn"]
        mean = g["mean"]
        lines += head("ghn", "## 5. Predicting initial parameters for unseen architectures (GHN)") + [
                  f"A GHN meta-trained for {g['meta_steps']} steps on {g['train_archs']} sampled architectures "
                  f"({g['meta_training_s']} s), then used on {g['test_archs']} architectures it never saw:", "",
                  "| initialisation | accuracy, no training | after one epoch |", "|---|---:|---:|",
                  f"| the architecture's own | {mean['own_init_acc']:.3f} | {mean['own_init_acc_1_epoch']:.3f} |",
                  f"| GHN-predicted | {mean['ghn_acc']:.3f} | {mean['ghn_acc_1_epoch']:.3f} |", ""]
        if g.get("plot"):
            lines += [f"Per architecture: `{g['plot']}`.", ""]
    if "prune" in s:
        p = s["prune"]
        lines += head("prune", "## 6. Pruning via a learned metanetwork") + [
                  f"Small digits CNNs pruned to {p['target_flop_reduction']:g}x fewer FLOPs, then fine-tuned 30 steps "
                  f"({p['networks']['test']} held-out networks):", "",
                  "| method | accuracy | FLOP reduction |", "|---|---:|---:|"]
        for method in ("magnitude", "meta (strength chosen)"):
            lines.append(f"| {method} | {p[method]['accuracy']:.3f} | {p[method]['flop_reduction']:.2f}x |")
        lines += ["", f"Edit strength chosen on validation networks: {p['chosen_strength']}.", ""]
    for name, err in summary.get("failed", {}).items():
        lines += [f"**Step {name} failed**: {err}", ""]
    lines += [f"Total: {summary.get('seconds', 0):.0f} s. These are smoke-sized runs; the benchmarks under "
              "benchmarks/ measure each part at full size with baselines and seeds.", ""]
    return "\n".join(lines)


def _save(r: _Run) -> None:
    from zoo.store import atomic_write

    atomic_write(r.out / "summary.json", json.dumps(r.summary, indent=1, default=str))
    atomic_write(r.out / "report.md", report(r.summary))


# ------------------------------------------------------------------------------------- run
def _earlier(out: Path) -> dict:
    """Step results an earlier run left in ``out`` (kept, and marked as earlier, until a
    step is rerun successfully): a run of some steps, or a failed one, loses none."""
    try:
        prev = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return {**prev.get("earlier_steps", {}), **prev.get("steps", {})}


def run(config: QuickstartConfig = QuickstartConfig(), say: Callable[[str], None] = print) -> dict:
    """Run the steps of ``config`` in order; return the summary (also written to
    ``out/summary.json`` and ``out/report.md`` after every step). A step that fails is
    recorded with its error and the later steps that need it are skipped; the others run."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = _Run(config, out, say, {"config": asdict(config), "steps": {}, "failed": {}, "seconds": 0.0,
                                "earlier_steps": _earlier(out)})
    needs_zoo = {"metanet", "augment"}
    torch.manual_seed(config.seed)
    for i, name in enumerate(s for s in STEPS if s in config.steps):
        if name in needs_zoo and ("zoo" in r.summary["failed"] or
                                  ("zoo" not in config.steps and not (r.zoo_dir / "zoo.json").exists())):
            r.summary["failed"][name] = "skipped: it needs the zoo step"
            _save(r)
            continue
        say(f"[{time.perf_counter() - t0:6.1f}s] step {name}: {_TITLES[name]}")
        try:
            r.summary["steps"][name] = _STEP_FUNCS[name](r)
            r.summary["earlier_steps"].pop(name, None)
        except KeyboardInterrupt:
            r.summary["failed"][name] = "interrupted"
            r.summary["seconds"] = time.perf_counter() - t0
            _save(r)
            raise
        except Exception as err:   # keep going: the finished steps stay on disk, the error is reported
            r.summary["failed"][name] = f"{type(err).__name__}: {err}"
            say(f"  step {name} failed: {type(err).__name__}: {err}")
        r.summary["seconds"] = time.perf_counter() - t0
        _save(r)
    say(f"[{time.perf_counter() - t0:6.1f}s] done: {out / 'report.md'}")
    return r.summary
