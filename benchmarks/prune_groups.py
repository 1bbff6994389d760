"""Cross-check: the channels Torch-Pruning removes together against WeightSpace's groups.

For every test architecture (tests/archs.py) this builds Torch-Pruning's dependency graph
(the public ``torch-pruning`` package: an optional benchmark dependency, not a test
dependency) and WeightSpace's neuron groups, and compares them at the level both share:
the set of (module, side) pairs a group shrinks, side "out" for a module's output axis
(weight rows, bias, norm parameters, running statistics, embedding columns) and "in" for
its input axis. Torch-Pruning lists a group per root layer; WeightSpace may cut one axis
into several groups (heads x head dims, concatenation blocks), so WeightSpace groups with
the same (module, side) set are merged before comparing. Every difference is listed with
its explanation, read off the two structures (see ``_explain``).

    python benchmarks/prune_groups.py                 # every architecture, writes benchmarks/prune_groups.md
    python benchmarks/prune_groups.py resnet_basic    # a subset, printed only
"""
from __future__ import annotations

import copy
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from archs import ARCHS, flatten_outputs  # noqa: E402
from metanet.space import WeightSpace  # noqa: E402

OUT = ROOT / "benchmarks" / "prune_groups.md"


def hf_llama_gqa():
    """A Llama built from a small config with grouped-query attention: 4 query heads share
    2 key/value heads (the same model as tests/test_prune_hf.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                      tie_word_embeddings=False, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval(), (torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(1)),)


ALL = {**ARCHS, "hf_llama_gqa": hf_llama_gqa}
TP_SECONDS = 120   # Torch-Pruning's grouping of the GQA Llama does not finish: it is stopped after this


class _time_limit:
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM; main thread, Unix)."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def _fire(self, signum, frame):
        raise TimeoutError(f"did not finish in {self.seconds} s")

    def __enter__(self):
        import signal

        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        import signal

        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def _side(ws: WeightSpace, module: nn.Module, axis: int, name: str) -> str:
    """"out" or "in" for an axis of a module's tensor: by the module's own layout for the
    layer types whose weight layout is known (a tied weight is "out" in its embedding and
    "in" in the output Linear that shares it), else by the edge role WeightSpace gives."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:   # transformers is optional here
        Conv1D = ()
    local = name.rpartition(".")[2]
    if local == "weight" and isinstance(module, Conv1D):
        return "in" if axis == 0 else "out"
    if local == "weight" and isinstance(module, nn.Embedding):
        return "out"
    if local == "weight" and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        transposed = getattr(module, "transposed", False)
        return ("in" if axis == 0 else "out") if transposed else ("out" if axis == 0 else "in")
    role = ws.spaces.roles.get(ws.aliases.get(name, name), {}).get(axis)
    return role if role in ("in", "out") else "out"   # 1-d parameters, statistics: output channels


def ws_groups(model: nn.Module, ws: WeightSpace) -> dict[frozenset, list[int]]:
    """(module, side) set -> the WeightSpace group ids that shrink exactly those."""
    modules = dict(model.named_modules())
    keys: dict[frozenset, list[int]] = defaultdict(list)
    for g in ws.groups:
        pairs = set()
        for name, axis in ws.group_axes(g.id):
            for full in [name] + [a for a, c in ws.aliases.items() if c == name]:
                path, _, local = full.rpartition(".")
                if path in modules:
                    pairs.add((path, _side(ws, modules[path], axis, full)))
        keys[frozenset(pairs)].append(g.id)
    return keys


def _tp_graph(model: nn.Module, inputs):
    import torch_pruning as tp

    # the first output tensor (logits) is what Torch-Pruning traces back from; Hugging Face
    # outputs also hold caches (tuples) that its tracer cannot read
    return tp.DependencyGraph().build_dependency(model, example_inputs=inputs if len(inputs) > 1 else inputs[0],
                                                 output_transform=lambda out: flatten_outputs(out)[0])


def tp_groups(model: nn.Module, inputs) -> dict[frozenset, int]:
    """(module, side) set -> index of the first such group in get_all_groups()."""
    names = {m: n for n, m in model.named_modules()}
    out: dict[frozenset, int] = {}
    for i, group in enumerate(_tp_graph(model, inputs).get_all_groups()):
        pairs = set()
        for dep, _ in group:
            m = dep.target.module
            if not isinstance(m, nn.Module) or m not in names or not any(True for _ in m.parameters(recurse=False)):
                continue   # parameter-free nodes (add, cat, reshape, activations)
            fn = dep.handler.__name__
            norm = isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm))
            pairs.add((names[m], "out" if norm or "out" in fn else "in"))
        if pairs:
            out.setdefault(frozenset(pairs), i)
    return out


def _runs(model, pruned, inputs) -> str:
    """"runs" when the pruned model runs and gives outputs of the original shapes."""
    try:
        with torch.no_grad():
            got, ref = flatten_outputs(pruned(*inputs)), flatten_outputs(model(*inputs))
    except Exception as err:
        return f"fails ({type(err).__name__}: {str(err).splitlines()[0][:90]})"
    if [t.shape for t in got[:1]] != [t.shape for t in ref[:1]]:
        return f"wrong output shape {tuple(got[0].shape)}"
    return "runs"


def tp_trial(model: nn.Module, inputs, index: int) -> str:
    """Remove channel 0 of Torch-Pruning's group ``index`` from a copy and run it."""
    m = copy.deepcopy(model)
    try:
        group = list(_tp_graph(m, inputs).get_all_groups())[index]
        group.prune(idxs=[0])
    except Exception as err:
        return f"fails to prune ({type(err).__name__}: {str(err).splitlines()[0][:90]})"
    return _runs(model, m, inputs)


def ws_trial(model: nn.Module, inputs, ws: WeightSpace, gids: list[int]) -> str:
    """Remove neuron 0 of WeightSpace groups ``gids`` with metanet.prune and run the result."""
    from metanet.prune import PruneError, prune_model

    try:
        pruned = prune_model(ws, model, {g: range(1, ws.groups[g].size) for g in gids}, inputs)
    except PruneError as err:
        return f"refused ({str(err)[:120]}...)"
    return _runs(model, pruned, inputs)


def _fmt(pairs) -> str:
    return ", ".join(f"{m or '<root>'}.{s}" for m, s in sorted(pairs))


def _types(model, pairs) -> str:
    modules = dict(model.named_modules())
    return ", ".join(f"{m or '<root>'}.{s} ({type(modules[m]).__name__})" for m, s in sorted(pairs))


def _explain(model, pairs: frozenset, side: str, other: list[frozenset], mine: list[frozenset]) -> str:
    """Why a group found by one side only is not a group of the other, read off the two
    structures: which of the patterns below it is."""
    overlap = [o for o in other if o & pairs]
    if side == "tp":
        if not overlap:
            return ("**fixed in WeightSpace**: these axes carry no WeightSpace group (the model's output "
                    "classes, or an axis an op mixes with others): Torch-Pruning would remove them")
        sup = [o for o in overlap if pairs < o]
        if sup:
            return ("**Torch-Pruning leaves modules out of a group**: WeightSpace ties these axes also to "
                    + _types(model, sup[0] - pairs) + "; pruning with Torch-Pruning's group would leave "
                    "them at the old width (a broken model) unless the user registers them")
        sub = [o for o in overlap if o < pairs]
        if sub:
            rest = pairs - frozenset().union(*sub)
            return ("**Torch-Pruning couples more**: WeightSpace cuts this into " + str(len(sub))
                    + " smaller groups" + (f"; not in them: {_types(model, rest)}" if rest else ""))
        return "**grouped differently**; overlapping WeightSpace groups: " + "; ".join(_fmt(o) for o in overlap[:3])
    if not overlap:
        return ("**no Torch-Pruning group**: its dependency graph does not couple these axes (or could not "
                "be built)")
    sub = [o for o in overlap if o < pairs]
    if sub:
        return ("**Torch-Pruning leaves modules out of a group**: its group " + _fmt(sub[0]) + " misses "
                + _types(model, pairs - sub[0]))
    sup = [o for o in overlap if pairs < o]
    if sup:
        return ("**finer in WeightSpace**: a subset of Torch-Pruning's group " + _fmt(sup[0])
                + " that WeightSpace proves can be cut on its own")
    return "**grouped differently**; overlapping Torch-Pruning groups: " + "; ".join(_fmt(o) for o in overlap[:3])


def compare(name: str) -> dict:
    model, inputs = ALL[name]()
    ws = WeightSpace.of(model, inputs)
    mine = ws_groups(model, ws)
    try:
        with _time_limit(TP_SECONDS):
            theirs = tp_groups(model, inputs)
        error = None
    except Exception as err:   # Torch-Pruning fails on some models: that is a result too
        theirs, error = {}, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    same = [k for k in mine if k in theirs]
    only_ws = [k for k in mine if k not in theirs]
    only_tp = [k for k in theirs if k not in mine]
    ws_runs = {g.id: ws_trial(model, inputs, ws, [g.id]) for g in ws.groups}
    tp_runs = {k: tp_trial(model, inputs, i) for k, i in theirs.items()}
    return {"name": name, "ws": mine, "tp": list(theirs), "same": same, "only_ws": only_ws, "only_tp": only_tp,
            "error": error, "space": ws, "model": model, "ws_runs": ws_runs, "tp_runs": tp_runs}


def _ws_result(r: dict, key) -> str:
    gids = r["ws"][key]
    if len(gids) == 1:
        return r["ws_runs"][gids[0]]
    return "; ".join(f"group {g} {r['ws_runs'][g]}" for g in gids)


def report(rows: list[dict]) -> str:
    import torch_pruning as tp

    lines = ["# Pruning groups: WeightSpace against Torch-Pruning's dependency graph", "",
             f"Torch-Pruning {tp.__version__}, torch {torch.__version__}. Command: "
             "`python benchmarks/prune_groups.py`.", "",
             "A group is compared as the set of (module, side) pairs it shrinks: `out` = a module's "
             "output axis (weight rows, bias, norm parameters and statistics), `in` = its input axis. "
             "WeightSpace groups with the same set (heads and head dims of one attention, blocks of "
             "one concatenation) count as one. Torch-Pruning's groups come from "
             "`DependencyGraph.get_all_groups()` with no layers ignored, so they include the final "
             "classifiers' output classes, which WeightSpace fixes.", "",
             "The last two columns remove one channel of every group in turn (neuron 0; Torch-Pruning's "
             "`Group.prune(idxs=[0])`, metanet's `prune_model`) on a copy and run it on the example input: "
             "how many groups give a model that runs with outputs of the original shape (WeightSpace groups "
             "counted one by one, unmerged).", "",
             "| model | WeightSpace groups (merged) | Torch-Pruning groups | equal | only WeightSpace | "
             "only Torch-Pruning | WeightSpace groups that prune and run | Torch-Pruning groups that prune and run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n_ws = sum(len(v) for v in r["ws"].values())
        tp_cell = f"failed: {r['error']}" if r["error"] else str(len(r["tp"]))
        ws_ok = sum(v == "runs" for v in r["ws_runs"].values())
        tp_ok = sum(v == "runs" for v in r["tp_runs"].values())
        lines.append(f"| {r['name']} | {n_ws} ({len(r['ws'])}) | {tp_cell} | {len(r['same'])} | "
                     f"{len(r['only_ws'])} | {len(r['only_tp'])} | {ws_ok}/{len(r['ws_runs'])} | "
                     f"{tp_ok}/{len(r['tp_runs'])} |")
    lines += ["", "## Kinds of difference", "",
              "- **fixed in WeightSpace**: the final layer's output classes. Torch-Pruning offers them as "
              "a group unless the user lists the layer in `ignored_layers`; WeightSpace fixes model "
              "outputs, since removing them changes what the model returns (the trial shows the output "
              "shape change).",
              "- **finer in WeightSpace**: attention. Torch-Pruning removes the same channel index from "
              "query, key and value (and the output projection's input); WeightSpace has, besides the "
              "heads, a group of query/key dims (they meet only in q·kᵀ) and a group of value dims "
              "(they meet the output projection), which may be cut separately. A module with one "
              "`head_dim` for all three (Hugging Face BERT, ViT) cannot hold different sizes: metanet "
              "refuses those cuts alone and the trial says so; cut to the same count they run.",
              "- **Torch-Pruning leaves modules out of a group**: a module type it does not handle "
              "(here `nn.RMSNorm`), a parameter owned by a non-leaf module (positional tables and class "
              "tokens of transformers, unless passed as `unwrapped_parameters`), or the output side of "
              "a depthwise convolution with a channel multiplier. Its pruned model then fails to run.",
              "- **grouped differently**, grouped convolutions: WeightSpace splits a grouped "
              "convolution's channels into (group, channel in group): whole groups are tied through "
              "every depthwise and grouped layer around them, channels inside a group only on the "
              "output side. Torch-Pruning couples channel indices one to one, which breaks the "
              "divisibility by `groups` (the trials fail).",
              "- **grouped differently**, `nn.MultiheadAttention`: Torch-Pruning prunes its "
              "`embed_dim` as one, tying the attention's inner heads x head_dim to the residual "
              "stream; WeightSpace keeps the residual stream and the heads x dims as separate groups "
              "(the finer symmetry). The module stores one size for both, so metanet rebuilds it as "
              "`metanet.prune.modules.PrunedMultiheadAttention` (same parameters, both sizes, the "
              "original attention scale) when they differ.",
              "- **refused by metanet**: a forward that computes a size from another tensor (the hand "
              "GPT splits by `self.d` and reshapes by the residual width `C // n_head`), or one "
              "`head_dim` for query/key and value (Hugging Face BERT, ViT, GPT-2) when only one of the "
              "two dim groups is cut. metanet runs the pruned copy and refuses with the error, leaving "
              "the model unchanged; Torch-Pruning's pruned model fails when it is run.",
              "- **no Torch-Pruning group**: recurrent hidden units (GRU, LSTM) are not coupled by its "
              "dependency graph; its graph of Hugging Face GPT-2 (Conv1D layers) cannot be built, and its "
              f"grouping of the Llama with grouped-query attention did not finish in {TP_SECONDS} s.",
              "- **grouped-query attention** (hf_llama_gqa: 4 query heads share 2 key/value heads): "
              "WeightSpace gives per layer a group of key/value heads (a key/value head goes with all its "
              "query heads: rows of k_proj, v_proj and q_proj, columns of o_proj) and a group of query "
              "heads within every key/value group (the same ones in each: rows of q_proj, columns of "
              "o_proj). Both prune and run (metanet updates `num_key_value_groups` and the config's "
              "`num_attention_heads` / `num_key_value_heads`); query/key dims form no group (rotary "
              "embeddings rotate pairs of them), and the value-dim group is refused because Llama uses "
              "one `head_dim` for queries, keys and values.",
              "", "## Differences", ""]
    for r in rows:
        bad = [v for v in list(r["ws_runs"].values()) + list(r["tp_runs"].values()) if v != "runs"]
        if not (r["only_ws"] or r["only_tp"] or r["error"] or bad):
            continue
        lines.append(f"### {r['name']}")
        if r["error"]:
            lines.append(f"- Torch-Pruning could not build its graph: `{r['error']}`")
        for k in r["only_ws"]:
            gids = r["ws"][k]
            lines.append(f"- only WeightSpace, groups {gids} ({r['space'].groups[gids[0]].name}): {_fmt(k)}. "
                         + _explain(r["model"], k, "ws", r["tp"], list(r["ws"]))
                         + " Pruned with metanet: " + _ws_result(r, k) + ".")
        for k in r["only_tp"]:
            lines.append(f"- only Torch-Pruning: {_fmt(k)}. " + _explain(r["model"], k, "tp", list(r["ws"]),
                                                                        r["tp"])
                         + f" Pruned with Torch-Pruning: {r['tp_runs'][k]}.")
        for k in r["same"]:
            if any(r["ws_runs"][g] != "runs" for g in r["ws"][k]):
                lines.append(f"- equal group {_fmt(k)}: pruned with metanet: {_ws_result(r, k)}")
            if r["tp_runs"][k] != "runs":
                lines.append(f"- equal group {_fmt(k)}: pruned with Torch-Pruning: {r['tp_runs'][k]}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    names = argv or list(ALL)
    rows = []
    for name in names:
        r = compare(name)
        print(f"{name:20s} WS {sum(len(v) for v in r['ws'].values()):3d} ({len(r['ws'])} merged)  "
              f"TP {len(r['tp']):3d}  equal {len(r['same']):3d}  only WS {len(r['only_ws'])}  "
              f"only TP {len(r['only_tp'])}  runs: WS {sum(v == 'runs' for v in r['ws_runs'].values())}/"
              f"{len(r['ws_runs'])} TP {sum(v == 'runs' for v in r['tp_runs'].values())}/{len(r['tp_runs'])}" + (f"  TP failed: {r['error']}" if r["error"] else ""), flush=True)
        rows.append(r)
    text = report(rows)
    if argv:
        print(text)
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
