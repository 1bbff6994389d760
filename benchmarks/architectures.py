"""The converter on real architectures it was not written for: Hugging Face models with
their default configurations (random weights; nothing is downloaded).

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


def cases():
    """(name, factory, example inputs, kwargs, other inputs for verify as (args, kwargs))."""
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


def main() -> int:
    torch.set_num_threads(2)
    only = set(sys.argv[1:])
    path = HERE / "results" / "architectures.json"
    results = {"machine": f"{platform.machine()}, torch {torch.__version__}", "models": {}}
    if only and path.exists():  # rerun some models, keep the others' rows
        old = json.loads(path.read_text())
        results.update({k: v for k, v in old.items() if k.startswith("load_average")})
        results["models"] = old["models"]
    known = [c[0] for c in cases()]
    if only - set(known):
        print(f"unknown models {sorted(only - set(known))}; the models are: {', '.join(known)}")
        return 2
    for name, make, x, kw, other in cases():
        if only and name not in only:
            continue
        load = os.getloadavg()[0]
        try:
            results["models"][name] = run_one(make, x, kw, other)
        except Exception as e:  # report, never hide: a failure is a row of the table
            results["models"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        results["models"][name]["load_average"] = max(load, os.getloadavg()[0])
        print(name, results["models"][name], flush=True)
    results["models"] = {n: results["models"][n] for n in known if n in results["models"]}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (HERE / "architectures.md").write_text(render(results))
    print("wrote benchmarks/architectures.md")
    return 0


def render(results: dict) -> str:
    loads = [r["load_average"] for r in results["models"].values() if "load_average" in r]
    loads += [v for k, v in results.items() if k.startswith("load_average_")]   # older runs: start, end
    load = (f" Load average {min(loads):.1f} to {max(loads):.1f} while the models ran "
            f"({os.cpu_count()} cores): above the core count, times are that much slower than on "
            "a quiet machine.") if loads else ""
    lines = ["# The converter on Hugging Face architectures (default configs)", "",
             "`python benchmarks/architectures.py`; random weights (perturbed by 0.02·N(0,1) so that "
             "zero-initialized heads do not hide errors), one input (batch 1, 8 tokens or a 224x224 "
             f"image), {results['machine']}. Target for the permutation check: < 1e-5 relative.{load}", "",
             f"`ws.verify` ({VERIFY_DRAWS} random draws of every kind the space offers, perm(utation), "
             "scal(ing), sign, per shape) at the traced input and at another: 13 tokens for text "
             "models, another image size where the model takes one, else a batch of 2 (ViT, DeiT "
             "and CLIP take only 224x224). Error: max|a-b| / max|a| over all outputs.", "",
             "| model | params | trace | ops | neuron groups | of which scalable | unsupported ops | "
             "permuted outputs, max rel. error | graph (nodes / edges) | graph time | round trip | "
             "verify at two shapes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} ||||||||||")
            continue
        graph = f"{r['nodes']:,} / {r['edges']:,}" if "nodes" in r else "not built (> 150M weights)"
        lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['trace_s']:.2f} s | {r['ops']} | {r['groups']} | "
                     f"{r['scalable']} | {len(r['warnings'])} | {r['perm_rel_err']:.1e} | {graph} | "
                     f"{r.get('graph_s', float('nan')):.2f} s | "
                     f"{'exact' if r.get('round_trip_exact') else '-' if 'nodes' not in r else 'NOT exact'} | "
                     f"{_verify_cell(r.get('verify'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
