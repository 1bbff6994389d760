"""Benchmark: state dicts <-> parameter graphs.

    python benchmarks/convert.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/convert.py --quick    # smoke run: fewer repeats, 1,000 checkpoints

Writes benchmarks/results/convert.json and benchmarks/convert.md. Every time has a
baseline measured in the same process: copying the state dict (``clone`` of every
tensor) for one checkpoint, stacking state dicts (``torch.stack`` per key) for a batch.
Peak memory is measured in a child process (see ``measure_memory``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metanet import WeightSpace  # noqa: E402
from metanet.graph.layout import ParamGraph  # noqa: E402  (imports torch_geometric: not timed)

RESULTS = ROOT / "benchmarks" / "results" / "convert.json"
TABLE = ROOT / "benchmarks" / "convert.md"
RESNET_INPUT = (1, 3, 224, 224)  # the weight space does not depend on the spatial size
CNN_INPUT = (1, 1, 28, 28)
TARGETS = {"trace_s": 3.0, "graph_ratio": 5.0, "batch_s": 10.0, "memory_ratio": 3.0}


# -- the two networks ------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """The Small CNN Zoo's network: grayscale input, 3 convs 3x3 of 16 channels (ReLU),
    global average pooling, a dense layer to 10 classes: 4,970 parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3)
        self.conv2 = nn.Conv2d(16, 16, 3)
        self.conv3 = nn.Conv2d(16, 16, 3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as in torchvision."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50: 7x7 stem, max pool, [3, 4, 6, 3] bottleneck blocks of widths 64-512
    (outputs 256-2048), global average pool, 1000 classes: 25,557,032 parameters."""

    def __init__(self, layers=(3, 4, 6, 3), n_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, stages = 64, []
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50() -> nn.Module:
    torch.manual_seed(0)
    return ResNet50().eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


# -- helpers ---------------------------------------------------------------------------------
def time_together(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Time several functions round-robin (a, b, a, b, ...) after ``warmup`` rounds, so
    that load from other processes and the state of the memory allocator hit the
    measured call and its baseline alike. Returns name -> {median, min, all}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            out = fn()
            times[k].append(time.perf_counter() - t0)
            del out
    return {k: {"median": statistics.median(v), "min": min(v), "all": v} for k, v in times.items()}


def nbytes(obj) -> int:
    return sum(v.numel() * v.element_size() for _, v in obj if isinstance(v, torch.Tensor))


def sd_bytes(sd) -> int:
    return sum(v.numel() * v.element_size() for v in sd.values())


def graph_sizes(ws, layout: str, g) -> dict:
    L = ws.layout(layout)
    per = {k: v.numel() * v.element_size() for k, v in g if isinstance(v, torch.Tensor)}
    return {"nodes": L.num_nodes, "edges": L.num_edges, "param_edges": L.num_param_edges,
            "width": L.width, "bytes": sum(per.values()), "bytes_by_tensor": per,
            "bytes_per_weight": sum(per.values()) / max(ws.num_params, 1),
            "padding_slots": sum(p.num_edges * L.width - p.n_out * p.n_in * p.feat for p in L.plans)}


def round_trip_ok(ws, sd, g) -> bool:
    back = ws.state_dict(g)
    return set(back) == set(sd) and all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in sd)


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmHWM: peak, VmRSS: now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def memory_child(ws_path: str, layout: str) -> None:
    """Runs in a fresh process: peak RSS of building one ResNet-50 graph."""
    torch.set_num_threads(2)
    with open(ws_path, "rb") as f:
        ws = pickle.load(f)
    sd = resnet50().state_dict()
    ParamGraph(x=torch.zeros(1, 1))  # torch_geometric imported and warm before the baseline
    gc.collect()
    res = {}
    for phase in ("first", "again"):  # first: builds the layout (edge_index etc.) too
        gc.collect()
        base = _status_kib("VmRSS")
        ok = _reset_hwm()
        g = ws.graph(sd, layout)
        peak = _status_kib("VmHWM")
        after = _status_kib("VmRSS")
        res[phase] = {"peak_delta": (peak - base) * 1024, "kept_delta": (after - base) * 1024,
                      "reset_ok": ok, "graph_bytes": nbytes(g),
                      "new_bytes": g.edge_attr.numel() * g.edge_attr.element_size() + nbytes(
                          [("extras", g.extras)])}
        if phase == "first":
            keep = g  # the layout's tensors stay alive, as they do in real use
        del g
    del keep
    print(json.dumps(res))


def _child(args: list[str], env_extra: dict, ws) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ws.pkl")
        with open(path, "wb") as f:
            pickle.dump(ws, f)
        env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT), **env_extra)
        out = subprocess.run([sys.executable, __file__, *[a if a != "WS" else path for a in args]],
                             capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def measure_memory(ws, layout: str) -> dict:
    """Peak memory of ``ws.graph(sd, layout)`` for ResNet-50, measured in a child process.

    Method: Linux peak resident set size. The child loads the (pickled) weight space and
    a ResNet-50 state dict, resets the kernel's high-water mark (``echo 5 >
    /proc/self/clear_refs``), builds the graph and reads ``VmHWM`` from
    ``/proc/self/status``; peak minus the RSS just before is the memory the build needed
    at its worst moment. glibc is told to serve every allocation of 64 KiB or more with
    mmap and to unmap it on free (``MALLOC_MMAP_THRESHOLD_=65536``), so freed tensors do
    not linger in the heap and memory freed earlier cannot hide a new allocation: RSS
    follows live tensor memory. (tracemalloc would not see torch's C++ allocations.)"""
    return _child(["--memory-child", "WS", layout], {"MALLOC_MMAP_THRESHOLD_": "65536",
                                                     "MALLOC_TRIM_THRESHOLD_": "0"}, ws)


# -- the benchmark ---------------------------------------------------------------------------
def bench_single(name: str, model: nn.Module, x: torch.Tensor, repeats: int, trace_repeats: int) -> dict:
    res: dict = {"model": name, "params": sum(p.numel() for p in model.parameters()),
                 "input": list(x.shape)}
    times = []
    for _ in range(trace_repeats):
        gc.collect()
        t0 = time.perf_counter()
        ws = WeightSpace.of(model, (x,), cache=False)
        times.append(time.perf_counter() - t0)
    res["trace_s_all"] = times
    res["trace_s"] = statistics.median(times)
    res["groups"] = len(ws.groups)
    sd = model.state_dict()
    res["state_dict_bytes"] = sd_bytes(sd)
    clone = lambda: {k: v.clone() for k, v in sd.items()}  # noqa: E731
    for layout in ("compact", "param"):
        t0 = time.perf_counter()
        ws.layout(layout)
        layout_s = time.perf_counter() - t0
        g = ws.graph(sd, layout)
        r = {"layout_build_s": layout_s, **graph_sizes(ws, layout, g), "round_trip": round_trip_ok(ws, sd, g)}
        t = time_together({"clone": clone, "graph": lambda: ws.graph(sd, layout),
                           "graph_nocheck": lambda: ws.graph(sd, layout, check=False),
                           "graph_out": lambda: ws.graph(sd, layout, out=g),
                           "inverse": lambda: ws.state_dict(g)}, repeats)
        r["clone_s"], r["clone_min_s"] = t["clone"]["median"], t["clone"]["min"]
        for k in ("graph", "graph_nocheck", "graph_out", "inverse"):
            r[f"{k}_s"], r[f"{k}_min_s"] = t[k]["median"], t[k]["min"]
        r["graph_ratio"] = r["graph_s"] / r["clone_s"]
        r["graph_ratio_min"] = r["graph_min_s"] / r["clone_min_s"]
        r["graph_out_ratio"] = r["graph_out_s"] / r["clone_s"]
        r["inverse_ratio"] = r["inverse_s"] / r["clone_s"]
        r["times"] = {k: v["all"] for k, v in t.items()}
        res[layout] = r
        del g
        gc.collect()
    res["clone_s"] = statistics.median([res[lay]["clone_s"] for lay in ("compact", "param")])
    return res, ws


def bench_batch(ws, sd: dict, B: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    stacked = {k: torch.randn((B,) + tuple(v.shape), generator=gen, dtype=v.dtype) for k, v in sd.items()}
    sds = [{k: v[i].clone() for k, v in stacked.items()} for i in range(B)]
    res = {"checkpoints": B, "stacked_bytes": sd_bytes(stacked)}
    stack = lambda: {k: torch.stack([d[k] for d in sds]) for k in sds[0]}  # noqa: E731
    for layout in ("compact", "param"):
        b = ws.graphs(stacked, layout)
        r = {"bytes": nbytes(b), "num_graphs": int(b.num_graphs)}
        back = ws.state_dicts(b)
        r["round_trip"] = all(torch.equal(back[k], stacked[k]) for k in stacked)
        t = time_together({"stack": stack, "graphs": lambda: ws.graphs(stacked, layout),
                           "inverse": lambda: ws.state_dicts(b)}, repeats)
        del b, back
        gc.collect()
        r["stack_s"], r["stack_min_s"] = t["stack"]["median"], t["stack"]["min"]
        r["graphs_s"], r["graphs_min_s"] = t["graphs"]["median"], t["graphs"]["min"]
        r["inverse_s"] = t["inverse"]["median"]
        r["checkpoints_per_s"] = B / r["graphs_s"]
        r["ratio_to_stack"] = r["graphs_s"] / r["stack_s"]
        r["times"] = {k: v["all"] for k, v in t.items()}
        res[layout] = r
    res["stack_s"] = statistics.median([res[lay]["stack_s"] for lay in ("compact", "param")])
    del sds
    return res


def verdict(value: float, target: float) -> str:
    return "met" if value < target else "**not met**"


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def fmt_b(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def write_markdown(res: dict) -> str:
    cnn, r50, batch, mem = res["small_cnn"], res["resnet50"], res["batch"], res["memory"]
    T = TARGETS
    lines = [
        "# Benchmark: state dicts <-> parameter graphs",
        "",
        f"`python benchmarks/convert.py{' --quick' if res['quick'] else ''}` on {res['machine']}, "
        f"torch {res['torch']}, `torch.set_num_threads(2)`, {res['date']}. Times are medians of "
        f"{res['repeats']} repeats after a warm-up, taken round-robin with their baseline (baseline, "
        "measured call, baseline, ...) in the same process, so that load from other processes on the "
        "shared cores hits both alike; the fastest repeat is given too.",
        "",
        "Networks, built in the script: **Small CNN** (Small CNN Zoo: grayscale input, 3 convs 3x3 of "
        f"16 channels, global average pool, linear to 10; {cnn['params']:,} parameters; traced on "
        f"{'x'.join(map(str, cnn['input']))}) and **ResNet-50** (hand-written torchvision-style v1.5 "
        f"bottlenecks [3, 4, 6, 3], widths 64-2048, 1000 classes; {r50['params']:,} parameters; traced on a "
        f"{'x'.join(map(str, r50['input']))} input; the weight space does not depend on the spatial size).",
        "",
        "## Targets",
        "",
        "| measure | result | baseline (same run) | target | verdict |",
        "|---|---|---|---|---|",
        f"| ResNet-50 trace, `WeightSpace.of(cache=False)` | {fmt_s(r50['trace_s'])} | – | < {T['trace_s']:.0f} s "
        f"| {verdict(r50['trace_s'], T['trace_s'])} |",
    ]
    for layout in ("compact", "param"):
        r = r50[layout]
        lines.append(f"| ResNet-50 `ws.graph(sd)`, {layout} | {fmt_s(r['graph_s'])} = **{r['graph_ratio']:.2f}x** "
                     f"clone (fastest: {r['graph_ratio_min']:.2f}x) | `{{k: v.clone()}}` {fmt_s(r['clone_s'])} "
                     f"| < {T['graph_ratio']:.0f}x | {verdict(r['graph_ratio'], T['graph_ratio'])} |")
    for layout in ("compact", "param"):
        r = r50[layout]
        lines.append(f"| ResNet-50 `ws.graph(sd, out=g)` (refill, as in a conversion loop), {layout} | "
                     f"{fmt_s(r['graph_out_s'])} = **{r['graph_out_ratio']:.2f}x** clone | `{{k: v.clone()}}` "
                     f"{fmt_s(r['clone_s'])} | < {T['graph_ratio']:.0f}x | "
                     f"{verdict(r['graph_out_ratio'], T['graph_ratio'])} |")
    for layout in ("compact", "param"):
        r = batch[layout]
        lines.append(f"| {batch['checkpoints']:,} Small-CNN checkpoints `ws.graphs(stacked)`, {layout} | "
                     f"**{fmt_s(r['graphs_s'])}** ({r['checkpoints_per_s']:,.0f} checkpoints/s; "
                     f"{r['ratio_to_stack']:.1f}x stacking) | `torch.stack` per key {fmt_s(r['stack_s'])} "
                     f"| < {T['batch_s']:.0f} s | {verdict(r['graphs_s'], T['batch_s'])} |")
    for layout in ("compact", "param"):
        m = mem[layout]["first"]
        ratio = m["peak_delta"] / m["graph_bytes"]
        lines.append(f"| ResNet-50 peak memory of the first `ws.graph(sd)` (builds the layout), {layout} | "
                     f"{fmt_b(m['peak_delta'])} = **{ratio:.2f}x** the graph's tensors | graph tensors "
                     f"{fmt_b(m['graph_bytes'])} | < {T['memory_ratio']:.0f}x | {verdict(ratio, T['memory_ratio'])} |")
    lines += ["", "## Single checkpoints", "",
              "| network | layout | nodes | edges (param + structural) | width | graph bytes | bytes per weight "
              "| padding slots "
              "| layout build (once per architecture) | clone (baseline) | `graph(sd)` | vs clone "
              "| `graph(sd, check=False)` | `state_dict(g)` | vs clone | round trip |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for net in (cnn, r50):
        for layout in ("compact", "param"):
            r = net[layout]
            lines.append(
                f"| {net['model']} | {layout} | {r['nodes']:,} | {r['edges']:,} ({r['param_edges']:,} + "
                f"{r['edges'] - r['param_edges']:,}) | {r['width']} | {fmt_b(r['bytes'])} | "
                f"{r['bytes_per_weight']:.1f} | {r['padding_slots']:,} | "
                f"{fmt_s(r['layout_build_s'])} | {fmt_s(r['clone_s'])} | {fmt_s(r['graph_s'])} | "
                f"{r['graph_ratio']:.2f}x | {fmt_s(r['graph_nocheck_s'])} | {fmt_s(r['inverse_s'])} | "
                f"{r['inverse_ratio']:.2f}x | {'exact' if r['round_trip'] else 'FAILED'} |")
    lines += ["",
              f"State dicts: Small CNN {fmt_b(cnn['state_dict_bytes'])}, ResNet-50 {fmt_b(r50['state_dict_bytes'])}. "
              f"Trace times (every run): Small CNN {', '.join(f'{t:.2f}' for t in cnn['trace_s_all'])} s; "
              f"ResNet-50 {', '.join(f'{t:.2f}' for t in r50['trace_s_all'])} s (the first trace in a "
              "process also pays torch.export's one-time warm-up, here taken by the Small CNN, traced first). "
              "Graph bytes count every tensor of the graph (edge_index, edge_attr, edge_type, edge_pos, x, "
              "node_type, node_pos, the role, depth and kernel-position features, extras); only edge_attr and "
              "extras are new per checkpoint, the rest is the layout's, shared by every graph of the "
              "architecture. Bytes per weight: graph bytes over the number of weights (a float32 weight is 4 "
              "bytes; in the param layout each weight also carries int64 edge_index (16 bytes: PyG's message "
              "passing indexes with int64), edge_type and edge_pos in the smallest integer type that holds "
              "them, int8 role, float16 depth and kernel position). A "
              "`metanet.graph.SharedBatch` of many checkpoints holds the structure once: 4 bytes per weight "
              "plus one structure. `state_dict(g)` returns fresh tensors (never views of `g.edge_attr`).",
              "",
              f"## Batches: {batch['checkpoints']:,} Small-CNN checkpoints", "",
              f"Random checkpoints stacked ({fmt_b(batch['stacked_bytes'])}); baseline: `torch.stack` per key over a "
              f"list of {batch['checkpoints']:,} state dicts.",
              "",
              "| layout | stack (baseline) | `ws.graphs(stacked)` | fastest | checkpoints/s | vs stacking "
              "| batch bytes | `ws.state_dicts(b)` | round trip |",
              "|---|---|---|---|---|---|---|---|---|"]
    for layout in ("compact", "param"):
        r = batch[layout]
        lines.append(f"| {layout} | {fmt_s(r['stack_s'])} | {fmt_s(r['graphs_s'])} | {fmt_s(r['graphs_min_s'])} | "
                     f"{r['checkpoints_per_s']:,.0f} | {r['ratio_to_stack']:.1f}x | {fmt_b(r['bytes'])} | "
                     f"{fmt_s(r['inverse_s'])} | {'exact' if r['round_trip'] else 'FAILED'} |")
    lines += ["", "## Memory", "",
              "Method: peak resident set size on Linux, in a fresh child process. The child loads the pickled "
              "weight space and a ResNet-50 state dict (and imports torch_geometric), resets the kernel's "
              "high-water mark (`echo 5 > /proc/self/clear_refs`), calls `ws.graph(sd, layout)` and reads `VmHWM` "
              "from `/proc/self/status`; the peak minus the RSS just before the call is what the build needed "
              "at its worst moment. glibc runs with `MALLOC_MMAP_THRESHOLD_=65536`, so that every tensor-sized "
              "allocation is its own mapping, returned to the kernel when freed: RSS then follows live tensor "
              "memory, and memory freed earlier cannot hide a new allocation. (tracemalloc does not see torch's "
              "C++ allocations.) \"first\" builds the layout (edge_index, edge_type, edge_pos, node features: "
              "once per architecture) and the edge features; \"again\" reuses the layout and allocates only "
              "`edge_attr` and `extras`.",
              "",
              "| layout | call | peak above baseline | kept after | graph tensors | peak / graph | "
              "new tensors of this call | peak / new |",
              "|---|---|---|---|---|---|---|---|"]
    for layout in ("compact", "param"):
        for phase in ("first", "again"):
            m = mem[layout][phase]
            lines.append(f"| {layout} | {phase} | {fmt_b(m['peak_delta'])} | {fmt_b(m['kept_delta'])} | "
                         f"{fmt_b(m['graph_bytes'])} | {m['peak_delta'] / m['graph_bytes']:.2f}x | "
                         f"{fmt_b(m['new_bytes'])} | {m['peak_delta'] / m['new_bytes']:.2f}x |")
    lines += ["", "## Notes", "", *[f"- {n}" for n in NOTES]]
    return "\n".join(lines) + "\n"


NOTES = [
    "For ResNet-50 the compact layout chooses edge width 1 and so is the param layout: the width is one "
    "number for the whole graph, and at width 9 the 1x1 convolutions, the classifier and the BatchNorm "
    "entries (56% of the values) would be 8/9 padding, which costs more than the 3x3 kernels (44%) save. "
    "`ws.graph(sd, width=9)` forces the neural-graph view.",
    "Where `ws.graph(sd)` spends its time for ResNet-50: `ws.check` (~0.2 ms), then "
    "`GraphLayout._fill` (metanet/graph/layout.py) allocates one 98 MiB `edge_attr` and copies each of "
    "the 267 tensors into its slice. Copying into an already-touched buffer takes about the clone's time. "
    "Whether the new buffer arrives already touched depends on the allocator: glibc serves allocations "
    "over 32 MiB with a fresh mmap, whose pages fault on first touch, while the clone's 267 tensors of at "
    "most 8 MiB are often recycled from the heap. The ratio therefore moves with the machine's load: "
    "separate runs measured it between 1.2x and 8.5x; compare runs only on a quiet machine. "
    "`ws.graph(sd, out=g)` refills a graph made before (a conversion loop) and allocates nothing: "
    "that is the copy alone. (Asking the kernel for transparent huge pages for the new buffer was "
    "tried: fast in isolation, but with the kernel's synchronous defragmentation it stalled for "
    "hundreds of milliseconds under memory churn, so it is not used.)",
    "The layout (edge_index, edge_type, edge_pos, node features) is built once per architecture into "
    "preallocated tensors, slice by slice, so its peak memory is the graph's own size.",
    "Small CNN: `graph(sd)` costs ~0.3 ms whatever the size (the state-dict check and building the "
    "`Data` object), 4-5x a clone of its 19 KiB; for many small checkpoints use `ws.graphs` on a batch. "
    "Its grayscale input channel is one node (a lone neuron), so the graph has 59 nodes "
    "(1 input + 3 x 16 hidden + 10 outputs).",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer repeats, 1,000 checkpoints")
    ap.add_argument("--memory-child", nargs=2, metavar=("WS_PICKLE", "LAYOUT"), help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print the table, write nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    repeats = 3 if args.quick else 11
    B = 1_000 if args.quick else 10_000
    res = {"quick": args.quick, "repeats": repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": f"{platform.machine()} Linux, {os.cpu_count()} CPUs visible",
           "date": time.strftime("%Y-%m-%d"), "targets": TARGETS}
    print("small CNN ...", flush=True)
    cnn_model = small_cnn()
    assert sum(p.numel() for p in cnn_model.parameters()) == 4970
    res["small_cnn"], ws_cnn = bench_single("Small CNN", cnn_model, torch.randn(CNN_INPUT), repeats, 3)
    print("ResNet-50 ...", flush=True)
    r50 = resnet50()
    res["resnet50"], ws_r50 = bench_single("ResNet-50", r50, torch.randn(RESNET_INPUT), repeats,
                                           1 if args.quick else 3)
    del r50
    gc.collect()
    print(f"batch of {B:,} ...", flush=True)
    res["batch"] = bench_batch(ws_cnn, cnn_model.state_dict(), B, 3 if args.quick else 5)
    print("memory ...", flush=True)
    res["memory"] = {layout: measure_memory(ws_r50, layout) for layout in ("compact", "param")}
    md = write_markdown(res)
    print(md)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=1, default=str) + "\n")
        TABLE.write_text(md)
        print(f"wrote {RESULTS.relative_to(ROOT)} and {TABLE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
