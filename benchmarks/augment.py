"""Augmentation and alignment benchmark.

    python benchmarks/augment.py --quick       # minutes: every part, small settings
    python benchmarks/augment.py               # the full run (GMN part: 3 seeds, 3 fractions)
    python benchmarks/augment.py --parts align,time     # a subset

Parts
1. ``barrier``: two independently trained digits CNNs and two tiny ResNets (width 16);
   the test-loss barrier along linear interpolation before alignment, after our weight
   matching, after our activation matching, and after the public ``rebasin`` package
   (``PermutationCoordinateDescent``) when it imports; time of each alignment. BatchNorm
   statistics are recomputed at every interpolation point.
2. ``time``: our weight-matching time for a ResNet-18-sized pair (zoo ``tiny_resnet``,
   width 64, blocks (2, 2, 2, 2): the ResNet-18 layout, 11M weights) and a small
   transformer pair (zoo ``tiny_transformer``), two random initialisations each.
3. ``throughput``: networks per second of every transform on stacks of 1,000 digits-CNN
   checkpoints on the CPU (one batched call).
4. ``gmn_accuracy`` / ``gmn_inr``: GMN predicting test accuracy on the digits-CNN zoo
   (the last checkpoint of its ReLU networks, so that scaling applies; Kendall τ) and classifying the digits
   SIREN zoo's INRs (last checkpoint; accuracy), with no augmentation, each augmentation
   alone (the exact ones that hold in that space, then the approximate ones) and MixUp
   with alignment, training on 10/30/100% of the training networks (split by network; by
   image for the INRs), the same number of optimizer steps at every fraction (``--epochs``
   passes over the full training split), mean and spread over seeds. The SIREN part
   enables the SIREN-specific transforms: sign flips and the bias shift (exact), input
   translation/rotation/scaling (approximate). ``--readout-norm batch`` passes
   ``readout_norm="batch"`` to GMN (the setting with which it learns on these zoos); those
   runs are stored under ``gmn_<task>[readout_norm=batch]`` with a section, checks on fresh
   seeds and a verdict of their own.

Writes ``benchmarks/results/augment.json`` and ``benchmarks/augment.md``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from metanet.augment import (MixUp, GaussianNoise, MagnitudePrune, Quantize,  # noqa: E402
                             RandomApply, RandomPermutation, RandomScaling, RandomSignFlip, SirenBiasShift,
                             WeightDropout, INRInputTransform)
from metanet.space import WeightSpace  # noqa: E402
from metanet.space.align import align_stack, loss_barrier, model_loss  # noqa: E402
from zoo.data import load_dataset  # noqa: E402
from zoo.models import create  # noqa: E402


# -- 1. loss barriers -------------------------------------------------------------------------------
def train(model, data, steps, seed, lr=1e-2):
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.y_train), (256,), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def loss_at(model, sd, data) -> float:
    """Test loss with BatchNorm statistics recomputed on the training images."""
    return model_loss(model, sd, data.x_test, data.y_test, calib=data.x_train)


def barrier(model, ws, a, b, data, n=11) -> float:
    return loss_barrier(ws, model, a, b, data.x_test, data.y_test, calib=data.x_train, n=n)


def _rebasin():
    try:
        import rebasin
        return rebasin, None
    except Exception as err:   # not installed, or fails to import with this torch
        return None, f"{type(err).__name__}: {err}"


def part_barrier(quick: bool) -> dict:
    data = load_dataset("digits")
    rebasin, why = _rebasin()
    cases = [("small_cnn", dict(padding=1, input_size=8), 150 if quick else 400),
             ("tiny_resnet", dict(width=16, blocks=(1, 1)), 100 if quick else 300)]
    out = {"rebasin": "used" if rebasin else f"not usable: {why}", "models": {}}
    for arch, kw, steps in cases:
        model = create(arch, **kw)
        ws = WeightSpace.of(model, model.example_input())
        a = train(model, data, steps, seed=1)
        b = train(model, data, steps, seed=2)
        row = {"steps": steps, "params": ws.num_params, "loss_a": loss_at(model, a, data),
               "loss_b": loss_at(model, b, data), "barrier_before": barrier(model, ws, a, b, data)}
        model.load_state_dict(a)
        for method in ("weights", "activations"):
            extra = dict(model=model, inputs=data.x_train[:512]) if method == "activations" else {}
            t0 = time.perf_counter()
            perm = ws.align(a, b, method=method, **extra)
            row[f"ours_{method}_s"] = time.perf_counter() - t0
            row[f"barrier_ours_{method}"] = barrier(model, ws, a, ws.permute(b, perm), data)
        if rebasin is not None:
            ma, mb = copy.deepcopy(model), copy.deepcopy(model)
            ma.load_state_dict(a)
            mb.load_state_dict(b)
            ma.eval(), mb.eval()
            x = data.x_train[:64]
            with torch.no_grad():
                ref = mb(x)
            t0 = time.perf_counter()
            try:
                pcd = rebasin.PermutationCoordinateDescent(ma, mb, x)
                pcd.rebasin()
                row["rebasin_s"] = time.perf_counter() - t0
                mb.eval()
                with torch.no_grad():
                    row["rebasin_function_kept"] = float((mb(x) - ref).abs().max() / ref.abs().max())
                row["barrier_rebasin"] = barrier(model, ws, a, {k: v.detach().clone() for k, v in
                                                               mb.state_dict().items()}, data)
            except Exception as err:
                row["rebasin_error"] = f"{type(err).__name__}: {err}"
        out["models"][arch] = row
        print(arch, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return out


# -- 2. alignment time at size -----------------------------------------------------------------------
def part_time(quick: bool) -> dict:
    out = {}
    cases = [("resnet18_layout", "tiny_resnet", dict(width=64, blocks=(2, 2, 2, 2), input_size=32, in_channels=3)),
             ("small_transformer", "tiny_transformer", dict(dim=64, depth=4, heads=4))]
    for label, arch, kw in cases:
        torch.manual_seed(0)
        model = create(arch, **kw)
        t0 = time.perf_counter()
        ws = WeightSpace.of(model, model.example_input())
        trace_s = time.perf_counter() - t0
        a = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(1)
        b = {k: v.clone() for k, v in create(arch, **kw).state_dict().items()}
        t0 = time.perf_counter()
        perm = ws.align(a, b)
        secs = time.perf_counter() - t0
        moved = sum(int((p != torch.arange(len(p))).sum()) for p in perm.perms)
        out[label] = {"arch": arch, "kwargs": kw, "params": ws.num_params, "groups": len(ws.groups),
                      "neurons": sum(g.size for g in ws.groups), "trace_s": trace_s, "align_s": secs,
                      "neurons_moved": moved}
        print(label, out[label], flush=True)
    return out


# -- 3. throughput --------------------------------------------------------------------------------------
def part_throughput(quick: bool) -> dict:
    n = 200 if quick else 1000
    out = {}
    for act in ("relu", "tanh"):
        model = create("small_cnn", padding=1, input_size=8, activation=act)
        ws = WeightSpace.of(model, model.example_input())
        torch.manual_seed(0)
        stack = {k: torch.randn(n, *v.shape) * 0.1 for k, v in model.state_dict().items()}
        ts = {"RandomPermutation": RandomPermutation(ws, seed=0), "GaussianNoise": GaussianNoise(ws, seed=0),
              "WeightDropout": WeightDropout(ws, seed=0), "MagnitudePrune": MagnitudePrune(ws),
              "Quantize": Quantize(ws, bits=4)}
        ts["RandomScaling" if act == "relu" else "RandomSignFlip"] = (RandomScaling(ws, seed=0) if act == "relu"
                                                                    else RandomSignFlip(ws, seed=0))
        ts["MixUp(plain)"] = MixUp(ws, seed=0)
        if act == "relu":
            ts["MixUp(align)"] = MixUp(ws, mode="align", seed=0)
        for name, t in ts.items():
            sub = stack if "align" not in name else {k: v[:min(n, 200)] for k, v in stack.items()}
            m = next(iter(sub.values())).shape[0]
            t(sub)
            t0 = time.perf_counter()
            reps = 3
            for _ in range(reps):
                t(sub)
            out[f"small_cnn/{act}/{name}"] = m * reps / (time.perf_counter() - t0)
    siren = create("siren", hidden=32, n_layers=3)
    ws = WeightSpace.of(siren, siren.example_input())
    stack = {k: torch.randn(n, *v.shape) * 0.1 for k, v in siren.state_dict().items()}
    for name, t in {"SirenBiasShift": SirenBiasShift(ws, seed=0), "RandomSignFlip": RandomSignFlip(ws, seed=0),
                    "INRInputTransform": INRInputTransform(ws, seed=0)}.items():
        t(stack)
        t0 = time.perf_counter()
        for _ in range(3):
            t(stack)
        out[f"siren/{name}"] = n * 3 / (time.perf_counter() - t0)
    for k, v in out.items():
        print(f"{k}: {v:,.0f} networks/s", flush=True)
    return {"n": n, "networks_per_s": out}


# -- 4. GMN with augmentation --------------------------------------------------------------------------
def kendall(pred, y) -> float:
    from scipy.stats import kendalltau
    return float(kendalltau(pred.numpy(), y.numpy()).statistic)


TASKS = {
    # name: zoo, filter, target, kind, augmentations (the exact ones that hold there, then approximate ones)
    "accuracy": dict(zoo="zoos/digits_cnn", where=dict(activation="relu", step="last"), target="test_acc", kind="regression",
                     augs=["none", "permutation", "scaling", "noise", "dropout", "prune", "quantize", "mixup_align"],
                     quick_augs=["none", "permutation", "mixup_align"]),
    "inr": dict(zoo="zoos/digits_siren", where=dict(step="last"), target="label", kind="classes", split_by="image",
                augs=["none", "permutation", "sign_flip", "bias_shift", "noise", "dropout", "inr_input",
                      "mixup_align"],
                quick_augs=["none", "bias_shift", "mixup_align"],
                # plain GMN does not fit SIRENs (benchmarks/metanet_inr.md): the scale/sign-aware one does
                gmn=dict(canonical="both"), batch=16),
}


BATCH = 32   # GMN training batch


_MAKERS = {
    # name: (constructor, default options); "prob" (any name) applies it to each network with that probability
    "permutation": (lambda ws, seed, **kw: RandomPermutation(ws, seed=seed, **kw), {}),
    "scaling": (lambda ws, seed, **kw: RandomScaling(ws, seed=seed, **kw), {}),
    "sign_flip": (lambda ws, seed, **kw: RandomSignFlip(ws, seed=seed, **kw), {}),
    "bias_shift": (lambda ws, seed, **kw: SirenBiasShift(ws, seed=seed, **kw), {}),
    "noise": (lambda ws, seed, **kw: GaussianNoise(ws, seed=seed, **kw), {"sigma": 0.05}),
    "dropout": (lambda ws, seed, **kw: WeightDropout(ws, seed=seed, **kw), {"p": 0.05}),
    "prune": (lambda ws, seed, **kw: MagnitudePrune(ws, **kw), {"q": 0.1}),
    "quantize": (lambda ws, seed, **kw: Quantize(ws, **kw), {"bits": 6}),
    "inr_input": (lambda ws, seed, **kw: INRInputTransform(ws, seed=seed, **kw),
                  {"translate": 0.05, "rotate": 10, "scale": 1.05}),
    # MixUp with alignment: the training stack is aligned once to one reference (ahead of
    # training), then partners are interpolated as they are
    "mixup_align": (lambda ws, seed, **kw: MixUp(ws, mode="plain", seed=seed, **kw), {"alpha": 0.2}),
}


def parse_aug(spec: str) -> list[tuple[str, dict]]:
    """``"none"``, or steps joined by ``+`` (applied left to right), each ``name`` or
    ``name:key=value:...``; e.g. ``mixup_align:alpha=0.4:prob=0.5+noise:sigma=0.02``."""
    if spec == "none":
        return []
    steps = []
    for part in spec.split("+"):
        name, *opts = part.split(":")
        if name not in _MAKERS:
            raise ValueError(f"unknown augmentation {name!r} in {spec!r}; known: none, {', '.join(_MAKERS)}")
        kw = {}
        for o in opts:
            k, eq, v = o.partition("=")
            if not eq:
                raise ValueError(f"augmentation option {o!r} in {spec!r} is not key=value")
            kw[k] = float(v) if any(c in v for c in ".e") else int(v)
        steps.append((name, kw))
    return steps


def _augmentation(spec: str, ws, seed: int, n_classes: int | None) -> list:
    """The steps of an augmentation spec (see :func:`parse_aug`), each seeded; step i of a
    composition draws from seed + 1000 i (a single augmentation from ``seed``)."""
    out = []
    for i, (name, kw) in enumerate(parse_aug(spec)):
        make, defaults = _MAKERS[name]
        kw = {**defaults, **kw}
        prob = kw.pop("prob", None)
        s = seed + 1000 * i
        if name == "mixup_align":
            t = make(ws, s, num_classes=n_classes, **({"p": prob} if prob is not None else {}), **kw)
        else:
            t = make(ws, s, **kw)
            if prob is not None:
                t = RandomApply(t, p=prob, seed=s + 500)
        out.append(t)
    return out


def base_key(task: str, gmn_options: dict | None = None) -> str:
    """The results key of a task's main table: ``gmn_<task>`` with the task's GMN, or
    ``gmn_<task>[key=value,...]`` with GMN options added on the command line
    (``--readout-norm batch``): such runs get their own section, checks and verdict and
    are never mixed with the runs of another GMN. Kept-apart runs append ``@<suffix>``."""
    opts = ",".join(f"{k}={v}" for k, v in sorted((gmn_options or {}).items()))
    return f"gmn_{task}" + (f"[{opts}]" if opts else "")


def _bases(results: dict, task: str) -> list[str]:
    """The main-table keys of ``task`` in ``results``: the task's own GMN first, then each
    set of added GMN options."""
    plain = f"gmn_{task}"
    extra = sorted(k for k in results if k.startswith(plain + "[") and "@" not in k)
    return ([plain] if plain in results else []) + extra


SETTINGS = ("zoo", "where", "target", "gmn", "networks", "train", "test", "epochs", "steps", "batch", "split_by")


def record(res: dict, frac: float, aug: str, seed: int, score: float, fit: float | None = None) -> None:
    """Put one run's score in its cell (the cell's score for that seed is replaced if it
    was there); ``seeds_by_fraction`` says which seed each score is. ``fit``: the score on
    the (unaugmented) training networks of that run, kept by seed in ``fit_by_fraction``."""
    if fit is not None:
        res.setdefault("fit_by_fraction", {}).setdefault(f"{frac}", {}).setdefault(aug, {})[str(seed)] = fit
    cell = res["score_by_fraction"].setdefault(f"{frac}", {}).setdefault(aug, [])
    who = res.setdefault("seeds_by_fraction", {}).setdefault(f"{frac}", {}).setdefault(aug, [])
    if seed in who:
        cell[who.index(seed)] = score
    else:
        cell.append(score)
        who.append(seed)


def _upgrade(prev: dict) -> dict:
    """Older results have no ``seeds_by_fraction``: their cells list ``seeds`` in order."""
    prev = copy.deepcopy(prev)
    if "seeds_by_fraction" not in prev:
        prev["seeds_by_fraction"] = {f: {a: list(prev["seeds"][:len(v)]) for a, v in cells.items()}
                                     for f, cells in prev["score_by_fraction"].items()}
    return prev


def part_gmn(task: str, quick: bool, n_seeds: int | None = None, n_epochs: int | None = None,
             augs: list[str] | None = None, fractions: tuple[float, ...] = (0.1, 0.3, 1.0),
             augs_up_to: float = 1.0, seed_list: list[int] | None = None, previous: dict | None = None,
             on_result=None, gmn_options: dict | None = None) -> dict:
    """``previous``: an earlier result of this part with the same settings; this run's
    cells are merged into it (a cell's score for a seed is replaced). ``on_result(res)``
    is called after every run (to save what is done). ``gmn_options``: GMN keyword
    arguments added to the task's (``readout_norm="batch"``); recorded in ``res["gmn"]``."""
    from metanet.graph import SharedBatch
    from metanet.nn import GMN
    from zoo import Zoo

    cfg = TASKS[task]
    z = Zoo.open(cfg["zoo"]).where(**cfg["where"])
    train_z, _, test_z = z.split([0.7, 0.15, 0.15], seed=0, by=cfg.get("split_by", "job"))
    ws = train_z.weight_space(0)
    classes = cfg["kind"] == "classes"
    dtype = torch.long if classes else torch.float32
    x_tr, y_tr = train_z.stacked(), train_z.targets(cfg["target"], dtype)
    x_te, y_te = test_z.stacked(), test_z.targets(cfg["target"], dtype)
    n_classes = int(y_tr.max()) + 1 if classes else None
    jobs = sorted(set(train_z.column("job")))
    job_of = train_z.column("job")
    seeds = tuple(seed_list) if seed_list else tuple(range(n_seeds if n_seeds else (1 if quick else 3)))
    epochs = n_epochs if n_epochs else (4 if quick else 25)
    augs = augs or (cfg["quick_augs"] if quick else cfg["augs"])
    bs = cfg.get("batch", BATCH)
    # every fraction trains for the same number of optimizer steps (``epochs`` passes over
    # the full training split): a smaller split is seen more often, not trained less
    total_steps = epochs * math.ceil(len(train_z) / bs)
    gmn_kw = {**cfg.get("gmn", {}), **(gmn_options or {})}
    res: dict = {"zoo": cfg["zoo"], "where": cfg["where"], "target": cfg["target"], "gmn": gmn_kw,
                 "score": "accuracy" if classes else "kendall_tau", "networks": len(z), "train": len(train_z),
                 "test": len(test_z), "epochs": epochs, "steps": total_steps, "batch": bs, "seeds": list(seeds),
                 "split_by": cfg.get("split_by", "job"), "score_by_fraction": {}, "seeds_by_fraction": {}}
    for a in augs:
        parse_aug(a)   # a typo fails now, not after an hour of training
    if previous is not None:
        diff = {k: (previous.get(k), res[k]) for k in SETTINGS if previous.get(k) != res[k]}
        if diff:
            raise SystemExit(f"--merge: the results on disk for gmn_{task} were measured with other settings "
                             f"(on disk, now): {diff}; run without --merge to start the part afresh")
        prev = _upgrade(previous)
        res["score_by_fraction"], res["seeds_by_fraction"] = prev["score_by_fraction"], prev["seeds_by_fraction"]
        if prev.get("fit_by_fraction"):
            res["fit_by_fraction"] = prev["fit_by_fraction"]
        res["seeds"] = sorted(set(previous["seeds"]) | set(seeds))

    def loss_fn(pred, y):
        if classes:
            return F.cross_entropy(pred, y if y.is_floating_point() else y)
        return F.mse_loss(pred.squeeze(-1), y)

    def score(pred, y):
        return float((pred.argmax(-1) == y).float().mean()) if classes else kendall(pred.squeeze(-1), y)

    for frac in fractions:
        for seed in seeds:
            g = torch.Generator().manual_seed(100 + seed)
            pick = torch.randperm(len(jobs), generator=g)[:max(1, round(frac * len(jobs)))].tolist()
            keep = {jobs[i] for i in pick}
            idx = torch.tensor([i for i, j in enumerate(job_of) if j in keep])
            xs, ys = {k: v[idx] for k, v in x_tr.items()}, y_tr[idx]
            aligned = None
            for aug in (augs if frac <= augs_up_to else ["none"]):
                t0 = time.perf_counter()
                torch.manual_seed(seed)
                model = GMN(in_width=ws.layout().width, hidden=32, layers=2, out_dim=n_classes or 1, **gmn_kw)
                model.fit_normalization([SharedBatch.of(ws, {k: v[:256] for k, v in xs.items()})])
                opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
                steps = _augmentation(aug, ws, seed, n_classes)
                data = xs
                if any(name == "mixup_align" for name, _ in parse_aug(aug)):
                    aligned = align_stack(ws, xs) if aligned is None else aligned
                    data = aligned
                n = len(ys)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
                model.train()
                gd = torch.Generator().manual_seed(1000 + seed)   # the same data order for every augmentation
                order, at = torch.randperm(n, generator=gd), 0
                for _ in range(total_steps):
                    if at >= n:
                        order, at = torch.randperm(n, generator=gd), 0
                    bi = order[at:at + bs]
                    at += bs
                    xb, yb = {k: v[bi] for k, v in data.items()}, ys[bi]
                    for t in steps:
                        if isinstance(t, MixUp):
                            xb, yb = t(xb, yb)
                        else:
                            xb = t(xb)
                    loss = loss_fn(model(SharedBatch.of(ws, xb)), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                model.eval()
                with torch.no_grad():
                    preds = torch.cat([model(SharedBatch.of(ws, {k: v[s:s + 256] for k, v in x_te.items()}))
                                       for s in range(0, len(y_te), 256)])
                    # the fit: the same score on the training networks this run saw, unaugmented
                    fit_preds = torch.cat([model(SharedBatch.of(ws, {k: v[s:s + 256] for k, v in xs.items()}))
                                           for s in range(0, n, 256)])
                sc, fit = score(preds, y_te), score(fit_preds, ys)
                record(res, frac, aug, seed, sc, fit)
                if on_result is not None:
                    on_result(res)
                print(f"gmn {task} frac={frac} seed={seed} {aug}: {res['score']} {sc:.4f} (training networks "
                      f"{fit:.4f}) ({time.perf_counter() - t0:.1f} s)", flush=True)
    return res


# -- report ----------------------------------------------------------------------------------------------
def _fmt(v, nd=4):
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _gmn_label(r: dict) -> str:
    return f"GMN ({', '.join(f'{k}={v!r}' for k, v in r['gmn'].items())})" if r.get("gmn") else "GMN"


def _gmn_section(r: dict) -> list[str]:
    what = "test accuracy (Kendall τ)" if r["score"] == "kendall_tau" else "the digit of an INR (accuracy)"
    kind = _gmn_label(r)
    lines = [f"## {kind} predicting {what}: {r['zoo']} {r['where']}", "",
              f"{r['networks']} checkpoints; train {r['train']}, test {r['test']} (split by {r.get('split_by', 'job')}); "
              + (f"{r['steps']} optimizer steps of {r['batch']} networks at every fraction ({r['epochs']} epochs "
                 f"of the full training split, a cosine schedule); " if "steps" in r else f"{r['epochs']} epochs; ")
              + f"seeds {r['seeds']}; score on the test split, mean ± std over seeds.", ""]
    if r.get("gmn", {}).get("readout_norm") == "batch":
        lines += ["readout_norm='batch': the pooled readout features standardised across the networks of a batch "
                  "(metanet.nn ReadoutNorm; running statistics at evaluation), the setting with which GMN learns "
                  "on these zoos (benchmarks/metanet_inr.md). Otherwise the same GMN (hidden 32, 2 layers, AdamW "
                  "2e-3) and training as the section above; these runs (`--readout-norm batch`) have a table, "
                  "checks and verdict of their own and are never mixed with the runs without it.", ""]
    sc = r["score_by_fraction"]
    fracs = sorted(sc, key=float)  # noqa
    augs = list(dict.fromkeys(a for f in fracs for a in sc[f]))
    full = len(r["seeds"])
    base10 = statistics.mean(sc["0.1"]["none"]) if "none" in sc.get("0.1", {}) else None
    base100 = statistics.mean(sc["1.0"]["none"]) if "none" in sc.get("1.0", {}) else None
    gap = base100 - base10 if base10 is not None and base100 is not None else None
    if r.get("commands"):
        lines += ["Measured by (each command adds or replaces its cells; same settings):", ""]
        lines += [f"- `{c['command']}` ({c['date']}, {c['machine']})" + (f"; {c['note']}" if c.get("note") else "")
                  for c in r["commands"] if c]
        lines.append("")
    share_col = gap is not None and gap > 0
    lines += ["| augmentation | " + " | ".join(f"{float(f):.0%} of training networks" for f in fracs)
              + (" | share of the gap recovered at 10% |" if share_col else " |"),
              "|---|" + "---|" * (len(fracs) + share_col)]
    for aug in augs:
        cells = []
        for f in fracs:
            v = sc[f].get(aug, [])
            who = r.get("seeds_by_fraction", {}).get(f, {}).get(aug, [])
            n = (f" (n={len(v)}: seed{'s' if len(who) > 1 else ''} {', '.join(map(str, who))})" if who else
                 f" (n={len(v)})") if v and len(v) != full else ""
            cells.append(f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}{n}" if v else "—")
        if share_col:
            v = sc.get("0.1", {}).get(aug)
            cells.append(f"{(statistics.mean(v) - base10) / gap:.0%}" if v and aug != "none" else "")
        lines.append(f"| {aug} | " + " | ".join(cells) + " |")
    ten = sc.get("0.1", {})
    if len(ten.get("none", [])) > 1:
        sd0 = statistics.pstdev(ten["none"])
        wide = []
        for a, v in ten.items():
            if a != "none" and len(v) > 1 and statistics.pstdev(v) > 2 * sd0:
                who = r.get("seeds_by_fraction", {}).get("0.1", {}).get(a, r["seeds"])
                lo = min(range(len(v)), key=v.__getitem__)
                wide.append(f"{a} (seed {who[lo]}: {v[lo]:.4f})")
        if wide:
            lines += ["", f"At 10%, rows whose spread over seeds is more than twice no augmentation's "
                      f"({sd0:.4f}), with their lowest seed: {', '.join(wide)}."]
    if any("+" in a or ":" in a for a in augs):
        lines += ["", "`a+b`: a, then b, on every batch; `name:key=value`: that transform's option (alpha: "
                  "MixUp's Beta(α, α); prob: the probability that a network is transformed (mixed, for "
                  "MixUp); sigma: the noise's scale relative to each tensor's spread). mixup_align mixes "
                  "partners from the training stack aligned once to one reference network ahead of "
                  "training; a step after it transforms the mixed networks."]
    if base10 is not None and base100 is not None:
        done = [(statistics.mean(v), a) for a, v in sc["0.1"].items() if a != "none" and len(v) == full]
        best = max(done) if done else (float("nan"), "—")
        share = (best[0] - base10) / gap if gap > 0 else float("nan")
        if any("permutation" in a for a in augs):
            lines += ["", "GMN is permutation invariant by construction, so the permutation augmentation changes "
                      "its inputs only up to the order of float sums: where its row differs from no augmentation, "
                      "that rounding, grown over training, is all it measures (a yardstick for the seed-to-seed "
                      "spread of one run)."]
        if r.get("gmn", {}).get("canonical") in ("sign", "both") and "sign_flip" in augs:
            lines += ["", "This GMN reads canonical forms under the sign-flip groups, so it is invariant to the "
                      "sign-flip augmentation (its row repeats no augmentation's). The SIREN bias shift adds "
                      "multiples of π/ω₀ (about 0.1 at ω₀ = 30) to biases that start at zero in this zoo "
                      "(DWSNets' init) and move little: the function is kept, but the shifted networks lie far "
                      "from every network the model is tested on."]
        if not done:
            lines += ["", f"Without augmentation GMN scores {base10:.4f} at 10% and {base100:.4f} at 100% of "
                      f"the training networks; no augmentation has all {full} seeds at 10% yet."]
        elif gap <= 0:
            lines += ["", f"No gap to recover: without augmentation GMN scores {base10:.4f} at 10% and "
                      f"{base100:.4f} at 100% of the training networks."]
        else:
            lines += ["", f"At 10% of the data the best augmentation over {full} seeds ({best[1]}, "
                      f"{best[0]:.4f}) recovers {share:.0%} of the gap between no augmentation at 10% "
                      f"({base10:.4f}) and at 100% ({base100:.4f}); the issue's target is at least 50% "
                      f"({'met' if share >= 0.5 else 'not met'} on these seeds). Every configuration run at these settings is "
                      f"in the table: the best of {len(done)} is picked after the fact, so its share is "
                      f"an optimistic estimate."]
    fits = r.get("fit_by_fraction", {})
    if any(fits.values()):
        lines += ["", "Fit: the same score on the training networks each run trained on (unaugmented), next to "
                  "its test score, mean over the seeds that recorded it (runs before the fit was recorded have "
                  "none):", "", "| augmentation | fraction | seeds | training networks | test |", "|---|---|---|---|---|"]
        for f in sorted(fits, key=float):
            for aug, by_seed in fits[f].items():
                who = r.get("seeds_by_fraction", {}).get(f, {}).get(aug, [])
                tests = [v for sd, v in zip(who, sc.get(f, {}).get(aug, [])) if str(sd) in by_seed]
                seeds = [int(k) for k in by_seed]
                lines.append(f"| {aug} | {float(f):.0%} | {sorted(seeds)} | {statistics.mean(by_seed.values()):.4f} | "
                             + (f"{statistics.mean(tests):.4f}" if tests else "—") + " |")
    if r.get("note"):
        lines += ["", r["note"]]
    lines.append("")
    return lines


def _verdict(results: dict) -> list[str]:
    """Issue 17's target on each zoo, from the main tables and the checks on other seeds:
    every configuration run at 10% (best first, its share of the gap and its seeds), the
    best one with all seeds, and what the measurements say about why it falls short."""
    lines = ["## Verdict: the issue's target at 10% of the training networks", "",
             "Target: the best augmentation at 10% of the training networks recovers at least 50% of the gap "
             "between no augmentation at 10% and at 100%. Only a configuration run on every seed of its table "
             "counts; a one-seed screen is listed but not counted.", ""]
    m = statistics.mean
    for task, base in [(t, b) for t in TASKS for b in _bases(results, t)]:
        r = results.get(base)
        if r is None or "none" not in r["score_by_fraction"].get("0.1", {}) \
                or "none" not in r["score_by_fraction"].get("1.0", {}):
            continue
        sc, full = r["score_by_fraction"], len(r["seeds"])
        b10, b100 = m(sc["0.1"]["none"]), m(sc["1.0"]["none"])
        b30 = m(sc["0.3"]["none"]) if "none" in sc.get("0.3", {}) else None
        gap = b100 - b10
        if gap <= 0:
            lines += [f"- {r['zoo']} ({_gmn_label(r)}): no gap (no augmentation {b10:.4f} at 10%, {b100:.4f} at 100%).", ""]
            continue
        rows = sorted(((m(v), a, len(v)) for a, v in sc["0.1"].items() if a != "none"), reverse=True)
        counted = [x for x in rows if x[2] == full]
        listing = ", ".join(f"{a} {v:.4f} ({(v - b10) / gap:.0%}; {'all ' + str(n) + ' seeds' if n == full else str(n) + ' seed' + ('s' if n > 1 else '')})"
                            for v, a, n in rows)
        head = (f"- {r['zoo']} ({r['score']}{', ' + _gmn_label(r) if base != f'gmn_{task}' else ''}): no augmentation {b10:.4f} at 10%"
                + (f", {b30:.4f} at 30%" if b30 is not None else "") + f", {b100:.4f} at 100%; half the gap is "
                f"{b10 + gap / 2:.4f}. Every configuration run at 10%, best first (share of the gap; seeds): {listing}.")
        lines.append(head)
        if not counted:
            lines += ["  No configuration has all its seeds yet: no verdict.", ""]
            continue
        best_v, best_a, _ = counted[0]
        share = (best_v - b10) / gap
        verdict = share >= 0.5
        more = len(rows) - len(counted)
        text = (f"  Best with all {full} seeds: {best_a}, {share:.0%} of the gap (the best of {len(counted)} run on "
                f"all seeds, picked after the fact" + (f"; {more} more run on fewer seeds" if more else "") + ").")
        checks = [x for x in results if x.startswith(f"{base}@")]
        fit10 = {a: list(r.get("fit_by_fraction", {}).get("0.1", {}).get(a, {}).values()) for a in ("none", best_a)}
        checked = False
        for key in checks:
            o = results[key]
            osc = o["score_by_fraction"]
            if (any(o.get(k) != r.get(k) for k in SETTINGS) or best_a not in osc.get("0.1", {})
                    or "none" not in osc.get("0.1", {})):
                continue
            # no augmentation at 100% over every seed run there (the main table's alone if the check has none)
            p10 = m(sc["0.1"]["none"] + osc["0.1"]["none"])
            p100 = m(sc["1.0"]["none"] + osc.get("1.0", {}).get("none", []))
            pa = m(sc["0.1"][best_a] + osc["0.1"][best_a])
            pooled = (pa - p10) / (p100 - p10) if p100 > p10 else float("nan")
            n10 = len(sc["0.1"]["none"]) + len(osc["0.1"]["none"])
            text += (f" On fresh seeds too (run `{key.split('@', 1)[1]}`), over {n10} seeds at 10% "
                     + ("" if osc.get("1.0", {}).get("none") else
                        f"(100% from the main table's {len(sc['1.0']['none'])}) ")
                     + f"it recovers {pooled:.0%}.")
            verdict = verdict and pooled >= 0.5
            checked = True
            for a in fit10:
                fit10[a] += list(o.get("fit_by_fraction", {}).get("0.1", {}).get(a, {}).values())
        if verdict and not checked:
            text += " Target met on these seeds; not yet checked on fresh seeds (a kept-apart run with it and no " \
                    "augmentation at 10% and 100%)."
        else:
            text += f" Target {'met' if verdict else 'not met'}" + (" once checked on fresh seeds." if checked else ".")
        if b30 is not None:
            above = [a for v, a, n in rows if v >= b30 and n == full]
            text += (f" On the main table's seeds, no augmentation at 30% ({b30:.4f}) "
                     + (f"is matched at 10% by {', '.join(above)}" if above
                        else "is matched at 10% by no configuration with all seeds") + ".")
        if fit10["none"] and fit10[best_a]:
            text += (f" Fit on the training networks at 10% (mean over the {len(fit10['none'])} and "
                     f"{len(fit10[best_a])} runs that recorded it): no augmentation {m(fit10['none']):.4f}, "
                     f"{best_a} {m(fit10[best_a]):.4f}.")
        larger = []
        for f in ("0.3", "1.0"):
            sb = r.get("seeds_by_fraction", {}).get(f, {})
            if best_a in sb and "none" in sb:
                common = [sd for sd in sb[best_a] if sd in sb["none"]]
                if common:
                    va = m(sc[f][best_a][sb[best_a].index(sd)] for sd in common)
                    vn = m(sc[f]["none"][sb["none"].index(sd)] for sd in common)
                    larger.append(f"{va:.4f} against {vn:.4f} at {float(f):.0%} (seeds {common})")
        if larger:
            text += f" With more data {best_a} scores " + ", ".join(larger) + " (no augmentation second)."
        full_fit = r.get("fit_by_fraction", {}).get("1.0", {}).get("none", {})
        if full_fit:
            who = r.get("seeds_by_fraction", {}).get("1.0", {}).get("none", [])
            tests = [v for sd, v in zip(who, sc["1.0"]["none"]) if str(sd) in full_fit]
            text += (f" No augmentation at 100%: training networks {m(full_fit.values()):.4f} / test "
                     f"{m(tests):.4f} ({len(tests)} runs).")
        fits = r.get("fit_by_fraction", {}).get("0.1", {})
        pairs = []
        for a, by_seed in fits.items():
            who = r.get("seeds_by_fraction", {}).get("0.1", {}).get(a, [])
            tests = [v for sd, v in zip(who, sc["0.1"].get(a, [])) if str(sd) in by_seed]
            if tests:
                pairs.append(f"{a} {m(by_seed.values()):.4f} / {m(tests):.4f} ({len(tests)})")
        if pairs:
            text += (" Fit on the training networks / test at 10%, every configuration of the main table that "
                     "recorded it (runs): " + ", ".join(pairs) + ".")
        note = results.get("notes", {}).get(base)
        if note:   # a reading of these runs, written by hand with them (JSON "notes", by results key)
            text += f"\n  What the measurements say: {note}"
        lines += [text, ""]
    return lines


def _checked(main: dict, others: list[dict]) -> list[str]:
    """The best augmentation at 10% of ``main`` checked on other seeds: a kept-apart run at
    the same settings with that augmentation and no augmentation at 10% and 100%."""
    sc, full = main["score_by_fraction"], len(main["seeds"])
    if "none" not in sc.get("0.1", {}) or "none" not in sc.get("1.0", {}):
        return []
    done = [(statistics.mean(v), a) for a, v in sc["0.1"].items() if a != "none" and len(v) == full]
    if not done:
        return []
    best = max(done)[1]
    out = []
    for o in others:
        osc = o["score_by_fraction"]
        if (any(o.get(k) != main.get(k) for k in SETTINGS) or best not in osc.get("0.1", {})
                or "none" not in osc.get("0.1", {})):
            continue
        m = statistics.mean
        top = osc.get("1.0", {}).get("none")   # without it, the main table's seeds give the 100% level
        b10, b100, a10 = m(osc["0.1"]["none"]), m(top or sc["1.0"]["none"]), m(osc["0.1"][best])
        p10, p100, pa = (m(sc["0.1"]["none"] + osc["0.1"]["none"]), m(sc["1.0"]["none"] + (top or [])),
                         m(sc["0.1"][best] + osc["0.1"][best]))
        share = (a10 - b10) / (b100 - b10) if b100 > b10 else float("nan")
        pooled = (pa - p10) / (p100 - p10) if p100 > p10 else float("nan")
        seeds = o.get("seeds")
        out += [f"Checked on other seeds ({seeds}, run `{o['name']}` below, same settings): no augmentation "
                f"{b10:.4f} at 10% and {b100:.4f} at 100%"
                + ("" if top else f" (the main table's seeds {main['seeds']}: not run on these)")
                + f", {best} {a10:.4f} at 10%: {share:.0%} of that gap. "
                f"Over all {full + len(seeds)} seeds: no augmentation {p10:.4f} at 10% and {p100:.4f} at 100%"
                + ("" if top else " (the main table's seeds)") + f", {best} {pa:.4f} at 10%: "
                f"{pooled:.0%} of the gap; the issue's target is "
                f"{'met' if pooled >= 0.5 else 'not met'} once the selection is checked.", ""]
    return out


def _screens(results: dict, keys: list[str]) -> list[str]:
    """Runs of one task kept apart from its table (``--key-suffix``: screening of the
    training length, a check on fresh seeds), one row per run and cell."""
    lines = ["Runs kept apart from the table above (`--key-suffix`: screening runs of the training length, "
             "checks on fresh seeds); one row per cell measured, mean ± std over the seeds listed:", "",
             "| run | epochs | optimizer steps | augmentation | fraction | seeds | score |",
             "|---|---|---|---|---|---|---|"]
    for key in keys:
        r = results[key]
        for f in sorted(r["score_by_fraction"], key=float):
            for aug, v in r["score_by_fraction"][f].items():
                who = r.get("seeds_by_fraction", {}).get(f, {}).get(aug, r["seeds"][:len(v)])
                lines.append(f"| {key.split('@', 1)[1]} | {r['epochs']} | {r['steps']} | {aug} | {float(f):.0%} | {who} | "
                             f"{statistics.mean(v):.4f}" + (f" ± {statistics.pstdev(v):.4f}" if len(v) > 1 else "") + " |")
    lines.append("")
    for key in keys:
        r, sc = results[key], results[key]["score_by_fraction"]
        cmd = "; ".join(f"`{c['command']}` ({c['date']}, {c['machine'].split(', ')[-1]}"
                        + (f"; {c['note']}" if c.get("note") else "") + ")"
                        for c in r.get("commands", []) if c)
        line = f"- {key.split('@', 1)[1]}: {cmd}"
        if "none" in sc.get("0.1", {}) and "none" in sc.get("1.0", {}):
            b10, b100 = statistics.mean(sc["0.1"]["none"]), statistics.mean(sc["1.0"]["none"])
            shares = [f"{a} {(statistics.mean(v) - b10) / (b100 - b10):.0%}" for a, v in sc["0.1"].items()
                      if a != "none" and b100 > b10]
            line += (f". No augmentation {b10:.4f} at 10%, {b100:.4f} at 100%"
                     + (f"; share of that gap recovered at 10%: {', '.join(shares)}." if shares else "."))
        lines.append(line)
    return lines + [""]


def write_report(results: dict) -> None:
    lines = ["# Augmentation and alignment benchmark", "",
             "Written by `python benchmarks/augment.py --report-only` from benchmarks/results/augment.json. "
             "Each part's numbers come from the run below (CPU, shared with other jobs: times are upper bounds).", ""]
    for part, run in results.get("runs", {}).items():
        if part.startswith("gmn_") and results.get(part, {}).get("commands"):
            lines.append(f"- {part}: {len(results[part]['commands'])} command(s), listed in its section "
                         f"(torch {run['torch']})")
            continue
        lines.append(f"- {part}: `{run['command']}` ({run['date']}, {run['machine']}, torch {run['torch']})")
    lines.append("")
    if "barrier" in results:
        r = results["barrier"]
        lines += ["## Loss barrier along linear interpolation (digits, test cross-entropy)", "",
                  f"rebasin package: {r['rebasin']}.", "",
                  "| model | weights | end losses | before | ours, weights (s) | ours, activations (s) | rebasin (s) |",
                  "|---|---|---|---|---|---|---|"]
        for arch, row in r["models"].items():
            rb = (f"{_fmt(row.get('barrier_rebasin'))} ({_fmt(row.get('rebasin_s'), 2)})"
                  if "barrier_rebasin" in row else row.get("rebasin_error", "—"))
            lines.append(f"| {arch} | {row['params']:,} | {row['loss_a']:.3f} / {row['loss_b']:.3f} | "
                         f"{row['barrier_before']:.4f} | {row['barrier_ours_weights']:.4f} ({row['ours_weights_s']:.2f}) | "
                         f"{row['barrier_ours_activations']:.4f} ({row['ours_activations_s']:.2f}) | {rb} |")
        lines += ["", "Barrier: the largest excess of the interpolated network's loss over the straight "
                  "line between the two end losses (11 points; BatchNorm statistics recomputed at each).", ""]
        for arch, row in r["models"].items():
            kept = row.get("rebasin_function_kept")
            if kept is not None and kept > 1e-3:
                lines += [f"On {arch}, rebasin's permuted network B computes a different function (largest output "
                          f"change {kept:.3g} relative to the largest output, on 64 training images): its "
                          f"permutation is not a symmetry of this model, so its barrier is that of another "
                          f"network. Ours keeps B's function exactly (tests/test_align.py).", ""]
    if "time" in results:
        lines += ["## Weight-matching time at size (two random initialisations)", "",
                  "| pair | weights | groups | neurons | trace (s) | align (s) |", "|---|---|---|---|---|---|"]
        for label, row in results["time"].items():
            lines.append(f"| {label} ({row['arch']} {row['kwargs']}) | {row['params']:,} | {row['groups']} | "
                         f"{row['neurons']} | {row['trace_s']:.2f} | {row['align_s']:.2f} |")
        lines += ["", "rebasin cannot align the transformer: its permutation spec has no attention heads.", ""]
    if "throughput" in results:
        r = results["throughput"]
        lines += [f"## Augmentation throughput (CPU, one batched call on {r['n']} networks; MixUp(align) on 200)", "",
                  "| transform | networks/s |", "|---|---|"]
        lines += [f"| {k} | {v:,.0f} |" for k, v in r["networks_per_s"].items()]
        lines.append("")
    for key in [b for task in TASKS for b in _bases(results, task)]:
        lines += _gmn_section(results[key])
        screens = sorted((x for x in results if x.startswith(f"{key}@")), key=lambda x: results[x]["epochs"])
        lines += _checked(results[key], [results[x] | {"name": x.split("@", 1)[1]} for x in screens])
        if screens:
            lines += _screens(results, screens)
    lines += _verdict(results)
    todo = []
    for task, cfg in TASKS.items():
        r = results.get(f"gmn_{task}")
        if r is None:
            todo.append(f"- GMN {task} (`--parts gmn_{task}`): not run yet.")
            continue
        sc, fracs = r["score_by_fraction"], ("0.1", "0.3", "1.0")
        few = [f"{a} at {float(f):.0%} ({len(sc[f][a])})" for f in fracs if f in sc for a in sc[f] if len(sc[f][a]) < 3]
        if few:
            todo.append(f"- GMN {task}: cells with fewer than 3 seeds (seeds run): {', '.join(few)}.")
        none_missing = [f"{float(f):.0%}" for f in fracs if "none" not in sc.get(f, {})]
        if none_missing:
            todo.append(f"- GMN {task}: no augmentation not run at {', '.join(none_missing)}.")
        for f in fracs:
            left = [a for a in cfg["augs"] if a not in sc.get(f, {})]
            if left:
                todo.append(f"- GMN {task} at {float(f):.0%}: not run: {', '.join(left)}.")
        blind = ["permutation"] + (["sign_flip"] if r.get("gmn", {}).get("canonical") in ("sign", "both") else [])
        blind = [a for a in blind if a in cfg["augs"] and any(a not in sc.get(f, {}) for f in fracs)]
        if blind:
            todo.append(f"- GMN {task}: the model is permutation invariant by construction"
                        + (" and reads canonical forms under sign flips" if "sign_flip" in blind else "")
                        + f", so the {' and '.join(blind)} rows would repeat no augmentation's up to float rounding.")
    if todo:
        lines += ["## Not yet measured", "", "(The GMN sections without readout norm; the readout-norm sections "
                  "measured only the cells they list, as their task asked.)", ""] + todo + [""]
    (HERE / "augment.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small settings: every part in minutes")
    ap.add_argument("--parts", default="barrier,time,throughput,gmn_accuracy,gmn_inr",
                    help="comma-separated subset of barrier,time,throughput,gmn_accuracy,gmn_inr")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default=None,
                    help="GMN seeds: a count N (seeds 0..N-1; default 3, 1 with --quick) or a list (1,2; one seed: 2,)")
    ap.add_argument("--epochs", type=int, default=None, help="GMN epochs (default 25; 4 with --quick)")
    ap.add_argument("--augs", default=None,
                    help="GMN augmentations, comma-separated (default: all of the task's); each 'none' or steps "
                         "joined by '+' (applied left to right), a step 'name' or 'name:key=value:...', e.g. "
                         "mixup_align:alpha=0.4:prob=0.5+noise:sigma=0.02 (prob: apply to each network with "
                         "that probability)")
    ap.add_argument("--fractions", default="0.1,0.3,1.0", help="GMN fractions of the training networks")
    ap.add_argument("--augs-up-to", type=float, default=1.0,
                    help="run the augmentations at fractions up to this one; larger ones train without (the baseline)")
    ap.add_argument("--report-only", action="store_true", help="rewrite augment.md from the JSON, run nothing")
    ap.add_argument("--key-suffix", default=None,
                    help="GMN parts: store the results under gmn_<task>@SUFFIX (a screening run, shown apart)")
    ap.add_argument("--readout-norm", default=None, choices=["batch"],
                    help="GMN parts: pass readout_norm to GMN (pooled readout features standardised across the "
                         "networks of a batch; metanet.nn ReadoutNorm). Stored under gmn_<task>[readout_norm=batch] "
                         "(with --key-suffix: ...@SUFFIX): a section, checks and verdict of their own")
    ap.add_argument("--merge", action="store_true",
                    help="GMN parts: add this run's cells to the results on disk (same settings required; "
                         "a cell's score for a seed is replaced); the page lists every command")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.report_only:
        write_report(json.loads((HERE / "results" / "augment.json").read_text()))
        return
    parts = args.parts.split(",")
    out_json = HERE / "results" / "augment.json"
    results = {}
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
             "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, load average "
                        f"{os.getloadavg()[0]:.1f} at the start", "torch": torch.__version__,
             "command": " ".join(["python benchmarks/augment.py"] + sys.argv[1:])}

    def save():
        """Merge this run's parts into the JSON on disk (runs of other parts may write it too)."""
        merged = json.loads(out_json.read_text()) if out_json.exists() else {}
        merged.setdefault("runs", {})
        for key, value in results.items():
            merged[key] = value
            merged["runs"][key] = stamp
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(merged, indent=1))
        return merged

    if "barrier" in parts:
        results["barrier"] = part_barrier(args.quick)
        save()
    if "time" in parts:
        results["time"] = part_time(args.quick)
        save()
    if "throughput" in parts:
        results["throughput"] = part_throughput(args.quick)
        save()
    for task, cfg in TASKS.items():
        gmn_options = {"readout_norm": args.readout_norm} if args.readout_norm else {}
        key = base_key(task, gmn_options) + (f"@{args.key_suffix}" if args.key_suffix else "")
        if f"gmn_{task}" not in parts:
            continue
        if not Path(cfg["zoo"], "manifest.jsonl").exists():
            print(f"{key} skipped: {cfg['zoo']} is not a packed zoo (metanet zoo build --recipe "
                  f"{Path(cfg['zoo']).name} --n 1000 --out {cfg['zoo']})")
            continue
        on_disk = json.loads(out_json.read_text()) if out_json.exists() else {}
        previous = on_disk.get(key) if args.merge else None
        commands = []
        if previous is not None:   # the commands that measured the cells kept
            commands = previous.get("commands") or [on_disk.get("runs", {}).get(key, {})]
        fractions = tuple(float(f) for f in args.fractions.split(","))
        augs = args.augs.split(",") if args.augs else None
        this = dict(stamp, fractions=list(fractions), augs_up_to=args.augs_up_to)

        def keep(res, key=key, commands=commands, this=this):
            results[key] = dict(res, commands=commands + [this])
            save()

        seed_list = [int(x) for x in args.seeds.split(",") if x] if args.seeds and "," in args.seeds else None
        n_seeds = int(args.seeds) if args.seeds and seed_list is None else None
        if n_seeds is not None and n_seeds < 1:
            raise SystemExit(f"--seeds {args.seeds}: a count of seeds is at least 1 (one seed by its number: "
                             f"--seeds {args.seeds},)")
        res = part_gmn(task, args.quick, n_seeds, args.epochs, augs, fractions, args.augs_up_to,
                       seed_list=seed_list, previous=previous, on_result=keep, gmn_options=gmn_options)
        keep(res)
    merged = save()
    write_report(merged)
    print(f"wrote {out_json} and {HERE / 'augment.md'}")


if __name__ == "__main__":
    main()
