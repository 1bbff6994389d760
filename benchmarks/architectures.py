"""The converter on real architectures it was not written for: Hugging Face models with
their default configurations, and torchvision and timm models where those packages import
(random weights; nothing is downloaded).

    python benchmarks/architectures.py

For each: trace time, neuron groups, unsupported-op warnings, and the check that a
random permutation keeps the outputs (max relative error over all outputs, eval mode;
weights first perturbed away from zero-initialized heads so the check can fail), plus
the bit-exact round trip through the parameter graph for the smaller ones, and
``ws.verify`` at two input shapes (the traced one and another sequence length or image
size where the model takes one, else another batch size): every permutation, scaling
and sign flip the weight space offers. Writes ``benchmarks/results/architectures.json``
and ``benchmarks/architectures.md``.

    python benchmarks/architectures.py GPT-2 ResNet-50    # rerun these rows, keep the others
    python benchmarks/architectures.py --family torchvision --json tv.json   # one family, own file
    python benchmarks/architectures.py --merge tv.json timm.json   # rows of such files into the table

Each row is saved as soon as it is measured (an interrupted run keeps the rows it
finished) and names the machine and torch it ran on: torchvision does not import beside
every torch build, so its rows may come from another machine than the others.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _images():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(1, 3, 224, 224, generator=gen), torch.randn(2, 3, 224, 224, generator=gen),
            torch.randn(1, 3, 160, 160, generator=gen))


# (name, constructor name, takes another image size): default configurations, random weights
TORCHVISION = [("ResNet-18", "resnet18", True), ("ResNeXt-50 32x4d", "resnext50_32x4d", True),
               ("MobileNetV3-Small", "mobilenet_v3_small", True), ("EfficientNet-B0", "efficientnet_b0", True),
               ("ConvNeXt-Tiny", "convnext_tiny", True), ("ViT-B/16", "vit_b_16", False),
               ("Swin-T", "swin_t", True), ("DenseNet-121", "densenet121", True),
               ("ShuffleNetV2 x1.0", "shufflenet_v2_x1_0", True), ("SqueezeNet 1.1", "squeezenet1_1", True),
               ("RegNetY-400MF", "regnet_y_400mf", True), ("MNASNet 0.5", "mnasnet0_5", True)]
TIMM = [("ViT-Tiny/16", "vit_tiny_patch16_224", False), ("MLP-Mixer S/16", "mixer_s16_224", False),
        ("ConvNeXt-Atto", "convnext_atto", True), ("EfficientNet-B0", "efficientnet_b0", True),
        ("ResNet-26d", "resnet26d", True), ("PoolFormer-S12", "poolformer_s12", True),
        ("LeViT-128S", "levit_128s", False), ("MobileViTv2-0.5", "mobilevitv2_050", True),
        ("HRNet-W18-small", "hrnet_w18_small", True), ("DLA-34", "dla34", True),
        ("GhostNet", "ghostnet_100", True), ("CaiT-XXS24", "cait_xxs24_224", False)]


def library_cases(family: str):
    """torchvision's or timm's models as cases (none where the package does not import)."""
    try:
        if family == "torchvision":
            import torchvision.models as lib

            def build(fn):
                return getattr(lib, fn)(weights=None)
        else:
            import timm as lib

            def build(fn):
                return lib.create_model(fn, pretrained=False)
    except Exception:   # not installed, or not importable beside this torch build
        return []
    img, img2, img160 = _images()
    return [(f"{family} {name}", (lambda fn=fn: build(fn)), (img,), {},
             ((img160,), {}) if sizes else ((img2,), {}))
            for name, fn, sizes in (TORCHVISION if family == "torchvision" else TIMM)]


FAMILIES = ("transformers", "torchvision", "timm")


def cases(family: str | None = None):
    """(name, factory, example inputs, kwargs, other inputs for verify as (args, kwargs)):
    the Hugging Face models, then torchvision's and timm's where they import."""
    out = []
    for fam in FAMILIES:
        if family in (None, fam):
            out += hf_cases() if fam == "transformers" else library_cases(fam)
    return out


def hf_cases():
    import transformers as T

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (1, 8), generator=gen)
    img = torch.randn(1, 3, 224, 224, generator=gen)
    ids13 = torch.randint(5, 100, (1, 13), generator=gen)             # another length
    img2 = torch.randn(2, 3, 224, 224, generator=gen)                 # another batch size
    img160 = torch.randn(1, 3, 160, 160, generator=gen)               # another image size
    img256 = torch.randn(1, 3, 256, 256, generator=gen)               # Swin: its last stage >= a window
    text, t5 = ((ids13,), {}), ((ids13,), {"decoder_input_ids": ids13})
    return [
        ("GPT-2", lambda: T.GPT2LMHeadModel(T.GPT2Config()), (ids,), {}, text),
        ("BERT", lambda: T.BertForSequenceClassification(T.BertConfig()), (ids,), {}, text),
        ("T5", lambda: T.T5ForConditionalGeneration(T.T5Config()), (ids,), {"decoder_input_ids": ids}, t5),
        ("BART", lambda: T.BartForConditionalGeneration(T.BartConfig()), (ids,), {}, text),
        ("Llama (2 layers, default width)", lambda: T.LlamaForCausalLM(T.LlamaConfig(
            num_hidden_layers=2, vocab_size=1000)), (ids,), {}, text),
        # ViT, DeiT and CLIP take only their configured image size: another batch size
        ("ViT", lambda: T.ViTForImageClassification(T.ViTConfig()), (img,), {}, ((img2,), {})),
        ("DeiT", lambda: T.DeiTForImageClassification(T.DeiTConfig()), (img,), {}, ((img2,), {})),
        ("Swin", lambda: T.SwinForImageClassification(T.SwinConfig()), (img,), {}, ((img256,), {})),
        ("CLIP vision", lambda: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig()), (img,), {}, ((img2,), {})),
        ("ConvNeXt", lambda: T.ConvNextForImageClassification(T.ConvNextConfig()), (img,), {}, ((img160,), {})),
        ("ResNet-50", lambda: T.ResNetForImageClassification(T.ResNetConfig()), (img,), {}, ((img160,), {})),
        ("RegNet", lambda: T.RegNetForImageClassification(T.RegNetConfig()), (img,), {}, ((img160,), {})),
        ("MobileNetV2", lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config()), (img,), {},
         ((img160,), {})),
        ("EfficientNet-B7", lambda: T.EfficientNetForImageClassification(T.EfficientNetConfig()), (img,), {},
         ((img160,), {})),
    ]


VERIFY_DRAWS = 2   # random draws of each kind per shape (big models: each is a forward pass)


def run_verify(ws, model, x, kw, other) -> dict:
    """``ws.verify`` at the example inputs and ``other``; a false symmetry is a result."""
    from metanet.space.verify import SymmetryError

    t = time.perf_counter()
    try:
        report = ws.verify(model, x, n=VERIFY_DRAWS, shapes=[other], kwargs=kw)
    except SymmetryError as err:
        return {"ok": False, "seconds": time.perf_counter() - t, "kind": err.kind, "shape": err.shape,
                "rel_err": err.rel_err, "group": err.group.name if err.group else None,
                "message": str(err)}
    except ValueError as err:  # e.g. the model rejects the other input: say so in the row
        return {"ok": False, "error": str(err)[:300]}
    return {"ok": True, "seconds": time.perf_counter() - t, "shapes": list(report.shapes),
            "max_rel_err": report.max_rel_err, "checks": report.checks}


def run_one(make, x, kw, other) -> dict:
    from metanet import WeightSpace
    from metanet.trace.export import _default_kwargs, tensor_leaves

    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WeightSpace.of(model, x, kw, cache=False)
    trace_s = time.perf_counter() - t
    kwargs = _default_kwargs(model, kw)
    sd = model.state_dict()
    with torch.no_grad():
        ref = tensor_leaves(model(*x, **kwargs))
    model.load_state_dict(ws.permute(sd, ws.sample_permutation(torch.Generator().manual_seed(0))))
    model.train().eval()   # drops caches computed from the old weights in eval mode (timm's LeViT)
    with torch.no_grad():
        out = tensor_leaves(model(*x, **kwargs))
    err = max(((a - b).abs().max() / (a.abs().max() + 1e-12)).item() for a, b in zip(ref, out))
    res = {"params": ws.num_params, "trace_s": trace_s, "ops": len(ws.op_graph), "groups": len(ws.groups),
           "scalable": sum(g.scaling for g in ws.groups), "warnings": ws.spaces.warnings,
           "perm_rel_err": err}
    if ws.num_params < 150e6:
        t = time.perf_counter()
        g = ws.graph(sd)
        res["graph_s"] = time.perf_counter() - t
        res["nodes"], res["edges"] = int(g.num_nodes), int(g.edge_index.shape[1])
        back = ws.state_dict(g)
        res["round_trip_exact"] = all(torch.equal(back[k], sd[k]) for k in sd)
        del g, back
    res["verify"] = run_verify(ws, model, x, kw, other)
    return res


def _verify_cell(v: dict | None) -> str:
    if not v:
        return "-"
    if "error" in v:
        return f"not run: {v['error']}"
    if not v["ok"]:
        return (f"**FAILED**: {v['kind']} of group {v['group']} changes outputs by {v['rel_err']:.1e} "
                f"at {v['shape']}")
    worst = max(v["max_rel_err"].values())
    kinds = "+".join(k[:4] for k in v["max_rel_err"])
    return f"ok ({kinds}), {worst:.1e} at {' and '.join(v['shapes'])}"


MACHINE = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
TABLE = HERE / "results" / "architectures.json"


def _ordered(models: dict) -> dict:
    """Rows in the order of :func:`cases`' lists (whether or not their package imports here)."""
    try:
        hf = [c[0] for c in hf_cases()]
    except ImportError:   # transformers absent: its rows (if any) keep their stored order
        hf = list(models)
    order = hf + [f"{fam} {n}" for fam, lst in (("torchvision", TORCHVISION), ("timm", TIMM)) for n, _, _ in lst]
    return {n: models[n] for n in [*order, *sorted(set(models) - set(order))] if n in models}


def _save(results: dict, path: Path) -> None:
    results["models"] = _ordered(results["models"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)
    if path == TABLE:
        (HERE / "architectures.md").write_text(render(results))


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="the converter on real architectures")
    ap.add_argument("names", nargs="*", help="rerun only these rows, keeping the others")
    ap.add_argument("--family", choices=FAMILIES, help="only this family's models")
    ap.add_argument("--json", type=Path, default=TABLE,
                    help="results file (default benchmarks/results/architectures.json, which also "
                         "rewrites benchmarks/architectures.md); rows already in it are kept")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                    help="copy the rows of these results files into the table, then stop")
    ap.add_argument("--notes", nargs="+", metavar="TEXT", help="with --merge: replace the page's notes by these")
    args = ap.parse_args(argv)
    if args.merge:
        results = json.loads(TABLE.read_text())
        for f in args.merge:
            other = json.loads(f.read_text())
            for name, row in other["models"].items():   # older files: the machine at the top
                results["models"][name] = dict(row, machine=row.get("machine", other.get("machine")))
        if args.notes is not None:
            results["notes"] = args.notes
        _save(results, TABLE)
        print(f"merged {len(args.merge)} file(s) into {TABLE}")
        return 0
    torch.set_num_threads(args.threads)
    only = set(args.names)
    results = {"machine": MACHINE, "models": {}}
    if args.json.exists():  # rerun some models, keep the others' rows
        old = json.loads(args.json.read_text())
        results.update({k: v for k, v in old.items() if k.startswith("load_average")})
        results["models"] = {n: dict(r, machine=r.get("machine", old.get("machine")))
                             for n, r in old["models"].items()}
    todo = cases(args.family)
    known = [c[0] for c in todo]
    if only - set(known):
        print(f"unknown models {sorted(only - set(known))}; the models here are: {', '.join(known)}")
        return 2
    if not todo:
        print(f"no {args.family} models: the package does not import here")
        return 2
    for name, make, x, kw, other in todo:
        if only and name not in only:
            continue
        load = os.getloadavg()[0]
        try:
            results["models"][name] = run_one(make, x, kw, other)
        except Exception as e:  # report, never hide: a failure is a row of the table
            results["models"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        results["models"][name].update(load_average=max(load, os.getloadavg()[0]), machine=MACHINE)
        print(name, results["models"][name], flush=True)
        _save(results, args.json)   # each row as soon as it is measured
    print(f"wrote {args.json}")
    return 0


def render(results: dict) -> str:
    rows = results["models"]
    machines = list(dict.fromkeys(r.get("machine", results["machine"]) for r in rows.values()))
    where = []
    for i, m in enumerate(machines):
        mine = [r for r in rows.values() if r.get("machine", results["machine"]) == m]
        loads = [r["load_average"] for r in mine if "load_average" in r]
        if i == 0:   # older runs kept the load at the start and end of the whole run
            loads += [v for k, v in results.items() if k.startswith("load_average_")]
        load = f", load average {min(loads):.1f} to {max(loads):.1f} while they ran" if loads else ""
        tag = f" [{i + 1}]" if len(machines) > 1 else ""
        where.append(f"{len(mine)} models on {m}{tag}{load}")
    lines = ["# The converter on Hugging Face, torchvision and timm architectures (default configs)", "",
             "`python benchmarks/architectures.py` (each family can run alone, on a machine where it "
             "imports: `--family torchvision --json F`, then `--merge F`); random weights (perturbed by "
             "0.02·N(0,1) so that zero-initialized heads do not hide errors), one input (batch 1, 8 tokens "
             "or a 224x224 image). Target for the permutation check: < 1e-5 relative. Times depend on the "
             "machine and its load (a load above the core count slows them by that factor): "
             + "; ".join(where) + ".", "",
             f"`ws.verify` ({VERIFY_DRAWS} random draws of every kind the space offers, perm(utation), "
             "scal(ing), sign, per shape) at the traced input and at another: 13 tokens for text "
             "models, another image size where the model takes one, else a batch of 2 (ViT, DeiT, "
             "CLIP and the fixed-size transformers and MLP-Mixer of torchvision and timm take only 224x224). Error: max|a-b| / max|a| over all outputs.", "",
             "| model | params | trace | ops | neuron groups | of which scalable | unsupported ops | "
             "permuted outputs, max rel. error | graph (nodes / edges) | graph time | round trip | "
             "verify at two shapes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if len(machines) > 1:
            name = f"{name} [{machines.index(r.get('machine', results['machine'])) + 1}]"
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} ||||||||||")
            continue
        graph = f"{r['nodes']:,} / {r['edges']:,}" if "nodes" in r else "not built (> 150M weights)"
        lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['trace_s']:.2f} s | {r['ops']} | {r['groups']} | "
                     f"{r['scalable']} | {len(r['warnings'])} | {r['perm_rel_err']:.1e} | {graph} | "
                     f"{r.get('graph_s', float('nan')):.2f} s | "
                     f"{'exact' if r.get('round_trip_exact') else '-' if 'nodes' not in r else 'NOT exact'} | "
                     f"{_verify_cell(r.get('verify'))} |")
    if results.get("notes"):
        lines += ["", *[f"- {n}" for n in results["notes"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
