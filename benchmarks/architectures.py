"""The converter on real architectures it was not written for: Hugging Face models with
their default configurations (random weights; nothing is downloaded).

    python benchmarks/architectures.py

For each: trace time, neuron groups, unsupported-op warnings, and the check that a
random permutation keeps the outputs (max relative error over all outputs, eval mode;
weights first perturbed away from zero-initialized heads so the check can fail), plus
the bit-exact round trip through the parameter graph for the smaller ones. Writes
``benchmarks/results/architectures.json`` and ``benchmarks/architectures.md``.
"""
from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def cases():
    import transformers as T

    ids = torch.randint(5, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    img = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return [
        ("GPT-2", lambda: T.GPT2LMHeadModel(T.GPT2Config()), (ids,), {}),
        ("BERT", lambda: T.BertForSequenceClassification(T.BertConfig()), (ids,), {}),
        ("T5", lambda: T.T5ForConditionalGeneration(T.T5Config()), (ids,), {"decoder_input_ids": ids}),
        ("BART", lambda: T.BartForConditionalGeneration(T.BartConfig()), (ids,), {}),
        ("Llama (2 layers, default width)", lambda: T.LlamaForCausalLM(T.LlamaConfig(
            num_hidden_layers=2, vocab_size=1000)), (ids,), {}),
        ("ViT", lambda: T.ViTForImageClassification(T.ViTConfig()), (img,), {}),
        ("DeiT", lambda: T.DeiTForImageClassification(T.DeiTConfig()), (img,), {}),
        ("Swin", lambda: T.SwinForImageClassification(T.SwinConfig()), (img,), {}),
        ("CLIP vision", lambda: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig()), (img,), {}),
        ("ConvNeXt", lambda: T.ConvNextForImageClassification(T.ConvNextConfig()), (img,), {}),
        ("ResNet-50", lambda: T.ResNetForImageClassification(T.ResNetConfig()), (img,), {}),
        ("RegNet", lambda: T.RegNetForImageClassification(T.RegNetConfig()), (img,), {}),
        ("MobileNetV2", lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config()), (img,), {}),
        ("EfficientNet-B7", lambda: T.EfficientNetForImageClassification(T.EfficientNetConfig()), (img,), {}),
    ]


def run_one(make, x, kw) -> dict:
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
    return res


def main() -> int:
    torch.set_num_threads(2)
    results = {"machine": f"{platform.machine()}, torch {torch.__version__}", "models": {}}
    for name, make, x, kw in cases():
        try:
            results["models"][name] = run_one(make, x, kw)
        except Exception as e:  # report, never hide: a failure is a row of the table
            results["models"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, results["models"][name], flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "architectures.json").write_text(json.dumps(results, indent=2))
    lines = ["# The converter on Hugging Face architectures (default configs)", "",
             "`python benchmarks/architectures.py`; random weights (perturbed by 0.02·N(0,1) so that "
             "zero-initialized heads do not hide errors), one input (batch 1, 8 tokens or a 224x224 "
             f"image), {results['machine']}. Target for the permutation check: < 1e-5 relative.", "",
             "| model | params | trace | ops | neuron groups | of which scalable | unsupported ops | "
             "permuted outputs, max rel. error | graph (nodes / edges) | graph time | round trip |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |||||||||")
            continue
        graph = f"{r['nodes']:,} / {r['edges']:,}" if "nodes" in r else "not built (> 150M weights)"
        lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['trace_s']:.2f} s | {r['ops']} | {r['groups']} | "
                     f"{r['scalable']} | {len(r['warnings'])} | {r['perm_rel_err']:.1e} | {graph} | "
                     f"{r.get('graph_s', float('nan')):.2f} s | "
                     f"{'exact' if r.get('round_trip_exact') else '-' if 'nodes' not in r else 'NOT exact'} |")
    (HERE / "architectures.md").write_text("\n".join(lines) + "\n")
    print("wrote benchmarks/architectures.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
