"""GHN commands: ``metanet train ghn`` (meta-train a GHN on sampled architectures) and
``metanet predict-init`` (initialise a model with a trained GHN, save safetensors).

    metanet train ghn --dataset digits --steps 1000 --out out/ghn
    metanet predict-init --ghn out/ghn/best --model path/to/file.py:ClassName --out init.safetensors
    metanet predict-init --ghn out/ghn/best --model mypkg.models:Net --input-shape 1,3,32,32
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register_train(kinds) -> None:
    p = kinds.add_parser(
        "ghn", help="meta-train a GHN to predict initial parameters of unseen architectures",
        description=("Meta-train a graph hypernetwork on architectures drawn from the zoo's "
                     "random sampler: each step predicts the parameters of a meta-batch of "
                     "architectures and follows the task loss of the predicted networks. "
                     "Checkpoints (safetensors) go to OUT/last (resumable) and OUT/best."))
    p.add_argument("--dataset", default="digits", choices=["digits", "mnist1d", "shapes32", "cifar10"],
                   help="digits (8x8), mnist1d (length 40), shapes32 (synthetic 32x32 images) or "
                        "cifar10 (a local copy under --data-root)")
    p.add_argument("--data-root", default="", metavar="DIR", help="folder holding CIFAR-10")
    p.add_argument("--out", default="out/ghn", metavar="DIR")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--meta-batch", type=int, default=8, help="architectures per step (default 8)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: tasks.predict_init.PredictInitConfig's, 3e-3)")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (default 50)")
    p.add_argument("--n-archs", type=int, default=300, help="training architectures (default 300)")
    p.add_argument("--val-archs", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gnn", default="transformer", choices=["transformer", "gated"],
                   help="transformer (GHN-3) or gated (GHN-2)")
    p.add_argument("--decoder", default="tiled", choices=["tiled", "lowrank"],
                   help="tiled (GHN-2/3) or lowrank (LoGAH)")
    p.add_argument("--hid", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--max-width", type=int, default=64, help="low-rank decoder's widest axis")
    p.add_argument("--rank", type=int, default=16,
                   help="low-rank decoder's rank; 64 predicted the benchmark's small networks better than 16, "
                        "at about twice the time per meta-step (benchmarks/hyper.md)")
    p.add_argument("--block", type=int, default=32, help="tiled decoder's block size")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N or auto (the GPU when PyTorch sees one); under torchrun, cuda gives "
                        "each process the GPU of its LOCAL_RANK")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict-init", help="initialise a model with a GHN and save it as safetensors",
        description=("Predict the parameters of your model with a trained GHN (a folder from "
                     "`metanet train ghn` or a Hub repository id), load them into the model and "
                     "save its state dict as safetensors. Parameters the GHN cannot predict keep "
                     "the model's own initialisation and are listed."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("--model takes 'module.path:Name' or 'file.py:Name', where Name is a model class "
                "or a function taking no arguments (--kwargs gives it keyword arguments) that "
                "returns a model or (model, example_inputs); or a saved Hugging Face model: a "
                "folder with a config.json naming its class in 'architectures' (built from the "
                "config, its example input the model's dummy_inputs; saved weights are not read: "
                "the GHN gives the initial ones)"))
    p.add_argument("--ghn", required=True, metavar="CKPT", help="GHN folder (save_pretrained) or Hub id")
    p.add_argument("--model", required=True, metavar="SPEC")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments for the model")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="shape of a float example input, when the model has no example_input()")
    p.add_argument("--out", default="init.safetensors", metavar="FILE")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's own init (unpredicted parts)")
    p.set_defaults(func=run_predict)


def run_train(args) -> int:
    from tasks.predict_init import PredictInitConfig, run

    if args.decoder == "lowrank":
        ghn = dict(max_width=args.max_width, rank=args.rank)
    else:
        ghn = dict(block=args.block)
    try:   # the config checks its values (steps, meta-batch, ... at least 1): an error line, not a traceback
        cfg = PredictInitConfig(
            dataset=args.dataset, data_root=args.data_root, out=args.out, steps=args.steps,
            meta_batch=args.meta_batch, batch_size=args.batch_size, warmup=args.warmup,
            **({} if args.lr is None else {"lr": args.lr}),
            n_archs=args.n_archs, val_archs=args.val_archs, eval_every=args.eval_every,
            ckpt_every=args.ckpt_every, seed=args.seed, resume=not args.no_resume, progress=not args.quiet,
            device=args.device,
            ghn=dict(gnn=args.gnn, decoder=args.decoder, hid=args.hid, layers=args.layers, **ghn))
        res = run(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"best validation accuracy of predicted parameters {res.best_val_acc:.4f} at step "
          f"{res.best_step}; GHN saved in {res.best_dir} (resumable state in {res.last_dir}); "
          f"{res.seconds:.0f} s")
    return EXIT_OK


def _saved_hf_factory(folder: Path):
    """A factory for the Hugging Face model saved in ``folder``: its class from the
    config's ``architectures``, built from the config (``--kwargs`` override config
    fields), with the model's ``dummy_inputs`` as example input."""
    from .convert import UsageError

    try:
        import transformers
    except ImportError as err:
        raise UsageError(f"--model {str(folder)!r} is a saved Hugging Face model; install "
                         "transformers to read it") from err
    config = transformers.AutoConfig.from_pretrained(folder)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise UsageError(f"--model {str(folder)!r}: config.json names no model class transformers "
                         f"knows in 'architectures' (found {names})")

    def build(**kwargs):
        for k, v in kwargs.items():
            setattr(config, k, v)
        model = cls(config)
        dummy = model.dummy_inputs
        return model, (dummy[model.main_input_name] if model.main_input_name in dummy
                       else next(iter(dummy.values())),)

    return build


def run_predict(args) -> int:
    import torch
    from safetensors.torch import save_model
    from torch import nn

    from metanet.hyper import GHN
    from .convert import UsageError, _load_factory

    try:
        kwargs = json.loads(args.kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("not an object")
    except ValueError as err:
        print(f"error: --kwargs must be a JSON object such as '{{\"width\": 64}}' ({err})", file=sys.stderr)
        return EXIT_USAGE
    try:
        factory = (_saved_hf_factory(Path(args.model)) if (Path(args.model) / "config.json").is_file()
                   else _load_factory(args.model)[0])
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    torch.manual_seed(args.seed)
    try:
        built = factory(**kwargs)
    except Exception as err:
        print(f"error: building {args.model} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAIL
    model, inputs = (built if isinstance(built, tuple) else (built, None))
    if not isinstance(model, nn.Module):
        print(f"error: {args.model} gave a {type(model).__name__}, not an nn.Module", file=sys.stderr)
        return EXIT_USAGE
    if inputs is None and args.input_shape:
        try:
            shape = [int(s) for s in args.input_shape.split(",")]
        except ValueError:
            print(f"error: --input-shape {args.input_shape!r}: expected integers like 1,3,32,32",
                  file=sys.stderr)
            return EXIT_USAGE
        inputs = (torch.zeros(shape),)
    if inputs is None and not callable(getattr(model, "example_input", None)):
        print("error: the model has no example_input(); pass --input-shape N,C,H,W (or return "
              "(model, example_inputs) from a factory)", file=sys.stderr)
        return EXIT_USAGE
    try:
        ghn = GHN.from_pretrained(args.ghn)
    except Exception as err:
        print(f"error: cannot load a GHN from {args.ghn!r}: {type(err).__name__}: {err} "
              "(expected a folder written by `metanet train ghn` or GHN.save_pretrained)", file=sys.stderr)
        return EXIT_USAGE
    ghn.eval()
    pred = ghn.load(model, inputs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out), metadata={"ghn": str(args.ghn), "model": args.model,
                                          "predicted": json.dumps(pred.predicted),
                                          "unpredicted": json.dumps(pred.unpredicted)})
    print(pred.report())
    print(f"wrote {out}")
    return EXIT_OK
