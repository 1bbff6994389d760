"""``metanet train accuracy|inr`` (train a metanetwork on a zoo) and ``metanet predict``
(a trained metanetwork's predictions for the checkpoints of a zoo or one checkpoint
file)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path


def _add_common(p: argparse.ArgumentParser, config_cls) -> None:
    defaults = {f.name: f.default for f in fields(config_cls)}
    p.add_argument("--zoo", required=True, help="zoo folder or hf://user/repo")
    p.add_argument("--model", default=defaults["model"], choices=["gmn", "gmn_hybrid", "ngt", "nfn", "statnn"],
                   help="gmn_hybrid: GMN plus StatNN's weight statistics, outputs summed")
    p.add_argument("--out", default=defaults["out"], help="output folder (best/, metrics.jsonl, plots)")
    p.add_argument("--epochs", type=int, default=defaults["epochs"])
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    p.add_argument("--lr", type=float, default=defaults["lr"])
    p.add_argument("--hidden", type=int, default=defaults["hidden"])
    p.add_argument("--layers", type=int, default=defaults["layers"])
    p.add_argument("--layout", default=defaults["layout"], choices=["compact", "param"])
    p.add_argument("--steps", default=defaults["steps"], choices=["all", "last"],
                   help="checkpoints used: every saved step of each network, or the last")
    p.add_argument("--seed", type=int, default=defaults["seed"])
    p.add_argument("--split-seed", type=int, default=defaults["split_seed"])
    p.add_argument("--max-train", type=int, default=None, help="cap on training checkpoints")
    p.add_argument("--readout-norm", default=None, choices=["batch"],
                   help="gmn/gmn_hybrid/ngt: standardise the pooled readout features across networks")
    p.add_argument("--device", default=defaults["device"],
                   help="cpu, cuda, cuda:N or auto (the GPU when PyTorch sees one); under torchrun, "
                        "cuda gives each process the GPU of its LOCAL_RANK")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(config_cls, args, **extra):
    return config_cls(zoo=args.zoo, model=args.model, out=args.out, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, hidden=args.hidden, layers=args.layers,
                      layout=args.layout, steps=args.steps, seed=args.seed, split_seed=args.split_seed,
                      max_train=args.max_train, progress=not args.quiet, readout_norm=args.readout_norm,
                      device=args.device, **extra)


def _report(result) -> int:
    if os.environ.get("RANK", "0") != "0":   # under torchrun rank 0 reports for every process
        return 0
    print(json.dumps({"best_epoch": result.best_epoch, "best_dir": result.best_dir, "test": result.test,
                      "seconds": round(result.seconds, 1)}, indent=1))
    return 0


def _checked(kind: str, fn, hint: str, device: str = "cpu") -> int:
    """Run a training command; a zoo that cannot serve it, or a device this machine does
    not have, is one line and exit code 2."""
    import sys

    from tasks.torchrun import pick_device
    from zoo.store import ZooError

    try:
        pick_device(device)
    except ValueError as err:
        print(f"metanet train {kind}: error: --device: {err}", file=sys.stderr)
        return 2
    try:
        return fn()
    except ZooError as err:
        more = f"\n  {hint}" if "missing in record" in str(err) else ""
        print(f"metanet train {kind}: error: {err}{more}", file=sys.stderr)
        return 2


def register_train(kinds) -> None:
    from tasks.classify_inr import INRConfig
    from tasks.predict_accuracy import AccuracyConfig

    p = kinds.add_parser("accuracy", help="predict networks' accuracy from their weights (Kendall τ, R²)",
                         description="Train a metanetwork to predict a metric of each zoo checkpoint.")
    _add_common(p, AccuracyConfig)
    p.add_argument("--target", default="test_acc", help="the metric predicted")

    def run_accuracy(args) -> int:
        from tasks.predict_accuracy import run

        return _checked("accuracy", lambda: _report(run(_config(AccuracyConfig, args, target=args.target))),
                        hint=f"`metanet train accuracy` reads the field --target ({args.target!r}) of every "
                             f"record; an INR zoo's records hold labels instead: `metanet train inr`",
                        device=args.device)

    p.set_defaults(func=run_accuracy)

    q = kinds.add_parser("inr", help="classify INRs (one SIREN per image) by their weights",
                         description="Train a metanetwork to classify the INRs of a zoo.")
    _add_common(q, INRConfig)
    q.add_argument("--num-classes", type=int, default=10)

    def run_inr(args) -> int:
        from tasks.classify_inr import run

        return _checked("inr", lambda: _report(run(_config(INRConfig, args, num_classes=args.num_classes))),
                        hint="`metanet train inr` reads the field 'label' of every record (an INR zoo); "
                             "to predict a metric of classifiers: `metanet train accuracy`", device=args.device)

    q.set_defaults(func=run_inr)


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="a trained metanetwork's predictions for a zoo or a checkpoint",
                              description="Print a trained metanetwork's output for every checkpoint of a "
                                          "zoo, or for one checkpoint file (with --arch).")
    p.add_argument("--model", required=True, help="folder saved by `metanet train` (its best/)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--zoo", help="zoo folder or hf://user/repo")
    src.add_argument("--checkpoint", help="a .safetensors or .pt state dict (read without pickle)")
    p.add_argument("--arch", help="with --checkpoint: zoo architecture name, e.g. small_cnn")
    p.add_argument("--arch-kwargs", default="{}", help="with --checkpoint: JSON kwargs of the architecture")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="first N checkpoints of the zoo only")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (the GPU when PyTorch sees one)")
    p.set_defaults(func=_predict)


def _predict(args) -> int:
    import sys

    from zoo.store import ZooError

    from ..space.weightspace import StateDictError
    from .convert import EXIT_USAGE, UsageError

    try:
        return _predict_checked(args)
    except (UsageError, ZooError, StateDictError) as err:
        print(f"metanet predict: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _load_metanet(path: str):
    """The metanetwork saved by `metanet train` in ``path``, or a UsageError saying what is wrong."""
    from tasks.predict_accuracy import load_model

    from .convert import UsageError

    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"--model {path!r}: no such folder (give the best/ folder that `metanet train` wrote)")
    if not (p / "task.json").is_file():
        hint = " (its best/ subfolder?)" if (p / "best" / "task.json").is_file() else ""
        raise UsageError(f"--model {path!r}: not a folder saved by `metanet train` (no task.json){hint}")
    try:
        return load_model(p)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"--model {path!r}: cannot load the metanetwork saved there "
                         f"({type(err).__name__}: {err})") from None


def _predict_checked(args) -> int:
    import torch

    from tasks.predict_accuracy import zoo_batches
    from tasks.torchrun import pick_device

    from .convert import UsageError

    try:
        device = pick_device(args.device)
    except ValueError as err:
        raise UsageError(f"--device: {err}") from None
    model, meta = _load_metanet(args.model)
    model.to(device).eval()
    layout = meta["config"].get("layout", "compact")
    classify = "num_classes" in meta["config"]
    if args.zoo:
        from zoo import Zoo

        z = Zoo.open(args.zoo)
        if args.limit is not None:
            z = z.subset(range(min(args.limit, len(z))))
        i = 0
        with torch.no_grad():
            for graphs, _ in zoo_batches(z, args.batch_size, layout):
                out = model(graphs.to(device)).cpu()
                for row in out:
                    rec = z.record(i)
                    value = int(row.argmax()) if classify else float(row.squeeze())
                    print(json.dumps({"id": rec["id"], "step": rec.get("step"), "prediction": value}))
                    i += 1
        return 0
    if not args.arch:
        raise SystemExit("metanet predict --checkpoint needs --arch (and --arch-kwargs) to trace the network")
    from metanet.graph import SharedBatch
    from zoo.importers import load_checkpoint_file
    from zoo.models import create, list_models

    from ..space.weightspace import WeightSpace

    if args.arch not in list_models():
        raise UsageError(f"--arch {args.arch!r}: not a zoo architecture; known: {', '.join(list_models())}")
    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as err:
        raise UsageError(f"--arch-kwargs {args.arch_kwargs!r} is not JSON ({err})") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--arch-kwargs must be a JSON object such as '{{\"width\": 16}}', got {args.arch_kwargs!r}")
    try:
        net = create(args.arch, **kwargs)
    except TypeError as err:
        raise UsageError(f"--arch-kwargs {args.arch_kwargs!r} do not fit {args.arch!r}: {err}") from None
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"--checkpoint {args.checkpoint!r}: no such file")
    sd = load_checkpoint_file(args.checkpoint)   # safetensors, or torch.load without pickle
    ws = WeightSpace.of(net, net.example_input())
    with torch.no_grad():
        out = model(SharedBatch.of(ws, {k: v.unsqueeze(0) for k, v in sd.items()}, layout).to(device))[0].cpu()
    print(json.dumps({"checkpoint": args.checkpoint,
                      "prediction": int(out.argmax()) if classify else float(out.squeeze())}))
    return 0
