"""Draw a neuron-level parameter graph with matplotlib.

>>> from metanet.graph.plot import plot_graph
>>> plot_graph(ws, ws.graph(model.state_dict()), "graph.png")

Node sets are columns, left to right in the order in which the op graph first reads a
weight touching them (a weight's input neurons sit left of its output neurons). Nodes
are coloured by kind (free neurons of a group, fixed neurons, hub nodes). A parameter
edge is one (in, out) neuron pair of one weight tensor, whatever the layout (the chunks
of the param layout are merged into one line): its colour is the sign of the mean of
its values, its opacity their mean absolute value relative to the largest in the same
tensor. Self-loops (biases, norm scales, running statistics, and weights whose only
neuron axis is the output) are small squares right of their node, one per tensor, with
the same colour code. Structural edges (concatenation, product) are dashed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["plot_graph"]

POS_COLOR = (0.84, 0.15, 0.16)     # positive weights: red
NEG_COLOR = (0.12, 0.47, 0.71)     # negative weights: blue
NODE_COLORS = {"free": "#9fd89f", "fixed": "#b0b0b0", "hub": "#ffb347"}
STRUCT_COLORS = {"concat": "#2ca02c", "product": "#9467bd"}
MAX_COLUMN = 40                    # a column taller than this many nodes is compressed


@dataclass
class _Column:
    set_index: int
    key: tuple
    offset: int
    size: int
    fixed: bool
    hub: bool
    rank: float = float("inf")
    label: str = ""
    first_role: str = ""          # "in", "out" or "self": how the first weight touches it
    first_weight: str = ""
    writer: str = ""              # the first weight whose out side (or self-loop) it is


def _first_reads(ws) -> dict[str, tuple[int, str]]:
    """Canonical weight name -> (index, op) of the first op that reads it."""
    first: dict[str, tuple[int, str]] = {}
    for node in ws.op_graph.nodes:
        for p in node.params:
            first.setdefault(ws.aliases.get(p, p), (node.index, node.op))
    return first


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


_SHORT = {"weight": "w", "bias": "b", "running_mean": "μ", "running_var": "σ²", "num_batches_tracked": "n"}


def _short(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    return _SHORT.get(last, last[:6])


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _set_label(ws, col: _Column) -> str:
    gid = getattr(ws, "_group_of_space", {})
    if col.hub:
        return f"hub ({col.size})\n{col.key[1]}"

    def atom(a):
        return f"g{gid[a]}" if a in gid else f"f{a}"

    if col.fixed:
        role = {"in": "input", "out": "output"}.get(col.first_role, "fixed")
        return f"{role} ({col.size})\n{_module(col.first_weight)}"
    segs = ["×".join(atom(a) for a in seg) for seg in col.key]
    name = segs[0] if len(segs) == 1 else "cat(" + ", ".join(segs) + ")"
    return f"{name} ({col.size})" + (f"\n{_module(col.writer)}" if col.writer else "")


def _rgba(values: torch.Tensor, mags: torch.Tensor, lo: float = 0.06, hi: float = 0.95):
    """Colour by sign, alpha by magnitude in [lo, hi]."""
    import numpy as np

    v = values.numpy()
    a = lo + (hi - lo) * mags.clamp(0, 1).numpy()
    out = np.empty((len(v), 4))
    out[:, :3] = np.where((v >= 0)[:, None], np.array(POS_COLOR)[None], np.array(NEG_COLOR)[None])
    out[:, 3] = a
    return out


def plot_graph(ws, graph, path: str | Path | None = None, *, max_edges: int = 3000,
               title: str | None = None, dpi: int = 150, figsize: tuple[float, float] | None = None,
               labels: bool = True):
    """Draw the parameter graph ``graph`` of weight space ``ws``; save a PNG to ``path``
    (if given) and return the matplotlib ``Figure``.

    ``graph`` is one graph from ``ws.graph(sd, layout)``; a batch from ``ws.graphs`` is
    drawn from its first graph. At most ``max_edges`` parameter edges (neuron pairs) are
    drawn: past that, the strongest ones (largest mean |w| relative to their tensor) are
    kept and the title says how many are shown. Columns taller than 40 nodes are
    compressed; labels name each node set (``g3``: neuron group 3, ``g1×g2``: a product
    of groups such as heads × head dims, ``cat(...)``: a concatenation) and the module
    that first writes it.
    """
    import numpy as np
    from matplotlib.collections import LineCollection, PathCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.path import Path as MPath

    layout_name = graph.layout if isinstance(graph.layout, str) else graph.layout[0]
    width = int(torch.as_tensor(graph.width).reshape(-1)[0])
    L = ws.layout(layout_name, width)
    E, N, W = L.num_edges, L.num_nodes, L.width
    if graph.edge_attr.shape[0] < E or graph.edge_attr.shape[-1] != W:
        raise ValueError(f"graph has edge features {tuple(graph.edge_attr.shape)}; this weight space's "
                         f"{layout_name} layout has {E} edges of width {W}")
    edge_attr = graph.edge_attr[:E].detach().to("cpu", torch.float64)
    edge_index = L.edge_index  # the layout's own: one graph, no batch offsets
    sets = list(L.sets.values())
    cols = [_Column(i, s.key, s.offset, s.size, s.fixed, s.hub) for i, s in enumerate(sets)]
    node_set = torch.zeros(N, dtype=torch.long)
    for c in cols:
        node_set[c.offset:c.offset + c.size] = c.set_index

    # -- per tensor: the sets it touches and its values merged per neuron pair ----------------
    first = _first_reads(ws)
    never = (10 ** 9, "")
    by_op = sorted(ws.weights, key=lambda n: (first.get(n, never)[0], ws.weights.index(n)))
    order = {name: r for r, name in enumerate(by_op)}
    pairs: list[tuple[torch.Tensor, ...]] = []
    loops: dict[int, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    n_loops_edges = 0

    def touch(col, rank, role, name):
        if rank < col.rank:
            col.rank, col.first_role, col.first_weight = rank, role, name

    for p in sorted(L.plans, key=lambda p: order[p.name]):
        if p.num_edges == 0:
            continue
        sl = slice(p.edge_offset, p.edge_offset + p.num_edges)
        vals = edge_attr[sl].reshape(p.n_out * p.n_in, p.chunks * W)[:, :p.feat]
        mean, mag = vals.mean(1), vals.abs().mean(1)
        mag = mag / mag.max() if mag.max() > 0 else mag
        src, dst = edge_index[0, sl][::p.chunks], edge_index[1, sl][::p.chunks]
        r = order[p.name]
        out_col = cols[int(node_set[dst[0]])]
        if bool((src == dst).all()):  # self-loops
            touch(out_col, 2 * r + 1, "self", p.name)
            out_col.writer = out_col.writer or p.name
            loops.setdefault(out_col.set_index, []).append((p.name, dst, mean, mag))
            n_loops_edges += p.num_edges
            continue
        in_col = cols[int(node_set[src[0]])]
        if first.get(p.name, never)[1] == "embedding":
            # a table lookup: its fixed axis (vocabulary, positions) is an input, whatever
            # edge direction a tied output layer gave the tensor
            table, other = (out_col, in_col) if out_col.fixed else (in_col, out_col)
            touch(table, -1 + r * 1e-3, "in", p.name)
            touch(other, 2 * r + 1, "out", p.name)
            other.writer = other.writer or p.name
        else:
            touch(in_col, 2 * r, "in", p.name)
            touch(out_col, 2 * r + 1, "out", p.name)
            out_col.writer = out_col.writer or p.name
        pairs.append((src, dst, mean, mag))

    # structural edges; sets touched by structural edges only sit next to their partner
    st = slice(L.num_param_edges, E)
    s_src, s_dst = edge_index[0, st], edge_index[1, st]
    s_kind = np.array(["concat", "product"])[(L.edge_type[st] - len(L.plans)).clamp(0, 1).numpy()]
    inf = float("inf")
    for _ in range(3):
        for a, b in set(zip(node_set[s_src].tolist(), node_set[s_dst].tolist())):
            if cols[a].rank == inf and cols[b].rank < inf:
                cols[a].rank = cols[b].rank - 0.5
            if cols[b].rank == inf and cols[a].rank < inf:
                cols[b].rank = cols[a].rank + 0.5
    ranked = sorted(cols, key=lambda c: (c.rank, c.set_index))

    # -- positions: columns left to right, wider gaps after columns with many self-loops ----
    xs, x = {}, 0.0
    for c in ranked:
        xs[c.set_index] = x
        x += 2.6 + 0.28 * len(loops.get(c.set_index, ()))
    col_of = {c.set_index: i for i, c in enumerate(ranked)}
    tallest = max([min(c.size, MAX_COLUMN) for c in cols] + [1])
    pos = np.zeros((N, 2))
    node_col = np.zeros(N, dtype=np.int64)
    step = {}
    for c in cols:
        step[c.set_index] = min(c.size, MAX_COLUMN) / c.size if c.size else 1.0
        ys = (np.arange(c.size) - (c.size - 1) / 2) * step[c.set_index]
        pos[c.offset:c.offset + c.size, 0] = xs[c.set_index]
        pos[c.offset:c.offset + c.size, 1] = -ys  # first neuron on top
        node_col[c.offset:c.offset + c.size] = col_of[c.set_index]

    ncols = len(ranked)
    xmax = max(xs.values()) if xs else 0.0
    if figsize is None:
        figsize = (min(max(6.5, 0.5 * xmax + 4.0), 32.0), min(max(4.5, 0.22 * tallest + 2.8), 20.0))
    fig = Figure(figsize=figsize)  # no pyplot: no global state, no GUI backend
    ax = fig.subplots()

    # -- parameter edges -----------------------------------------------------------------
    total_pairs = 0
    if pairs:
        src, dst, val, mag = (torch.cat(t) for t in zip(*pairs))
        total_pairs = len(src)
        if total_pairs > max_edges:
            keep = torch.topk(mag, max_edges).indices
            src, dst, val, mag = src[keep], dst[keep], val[keep], mag[keep]
        o = torch.argsort(mag, stable=True)  # faint first, strong on top
        src, dst, val, mag = src[o].numpy(), dst[o].numpy(), val[o], mag[o]
        p0, p1 = pos[src], pos[dst]
        colors = _rgba(val, mag)
        lw = 0.35 + 1.0 * mag.numpy()
        straight = (node_col[dst] - node_col[src]) == 1
        if straight.any():
            ax.add_collection(LineCollection(np.stack([p0[straight], p1[straight]], axis=1),
                                             colors=colors[straight], linewidths=lw[straight], zorder=1))
        if (~straight).any():
            paths = []
            for (x0, y0), (x1, y1), c0, c1 in zip(p0[~straight], p1[~straight], node_col[src][~straight],
                                                  node_col[dst][~straight]):
                span = abs(int(c1) - int(c0))
                if span == 0:  # within one set: an arc to the right
                    ctrl = (x0 + 1.2, (y0 + y1) / 2)
                elif c1 > c0:  # skip forward: arc above
                    ctrl = ((x0 + x1) / 2, max(y0, y1) + 0.8 + 0.9 * span)
                else:  # backward (a residual stream written by a later layer): arc below
                    ctrl = ((x0 + x1) / 2, min(y0, y1) - 0.8 - 0.9 * span)
                paths.append(MPath([(x0, y0), ctrl, (x1, y1)], [MPath.MOVETO, MPath.CURVE3, MPath.CURVE3]))
            ax.add_collection(PathCollection(paths, facecolors="none", edgecolors=colors[~straight],
                                             linewidths=lw[~straight], zorder=1))

    # -- structural edges ----------------------------------------------------------------
    n_struct = int(s_src.numel())
    if n_struct:
        segs = np.stack([pos[s_src.numpy()], pos[s_dst.numpy()]], axis=1)
        ax.add_collection(LineCollection(segs, colors=[STRUCT_COLORS[k] for k in s_kind],
                                         linestyles=(0, (3, 2)), linewidths=1.0, alpha=0.85, zorder=2))

    # -- nodes ---------------------------------------------------------------------------
    node_size = float(np.clip(1100.0 / tallest, 6, 70))
    for kind, sel in (("free", lambda c: not c.fixed), ("fixed", lambda c: c.fixed and not c.hub),
                      ("hub", lambda c: c.hub)):
        idx = [i for c in cols if sel(c) for i in range(c.offset, c.offset + c.size)]
        if idx:
            ax.scatter(pos[idx, 0], pos[idx, 1], s=node_size, c=NODE_COLORS[kind],
                       marker="D" if kind == "hub" else "o", edgecolors="#333333",
                       linewidths=0.6, zorder=3)

    # -- self-loops: one small square per tensor, right of the node ---------------------------
    n_loops = 0
    ytop = pos[:, 1].max() if N else 0.0
    for si, items in loops.items():
        msize = float(np.clip(node_size * 0.45 * min(step[si], 1.0), 3, 20))
        c = cols[si]
        for j, (name, nodes, mean, mag) in enumerate(items):
            xy = pos[nodes.numpy()].copy()
            xy[:, 0] += 0.42 + 0.28 * j
            ax.scatter(xy[:, 0], xy[:, 1], s=msize, marker="s", c=_rgba(mean, mag, lo=0.2),
                       edgecolors="white", linewidths=0.4, zorder=4)
            if labels:
                ax.text(xy[0, 0], pos[c.offset, 1] + 0.45, _short(name), fontsize=5.5, color="#444444",
                        ha="center", va="bottom", rotation=90 if len(_short(name)) > 2 else 0, zorder=5)
            n_loops += len(nodes)

    # -- column labels -------------------------------------------------------------------
    ymin = pos[:, 1].min() if N else 0.0
    if labels:
        for c in ranked:
            c.label = _set_label(ws, c)
            ax.text(xs[c.set_index], ymin - 0.8, c.label, ha="center" if ncols <= 10 else "right",
                    va="top", fontsize=7, rotation=0 if ncols <= 10 else 30, rotation_mode="anchor")

    right = max([xs[c.set_index] + 0.42 + 0.28 * len(loops.get(c.set_index, ())) for c in cols] + [0.0])
    ax.set_xlim(-1.2, max(right, xmax) + 0.8)
    ax.set_ylim(ymin - (2.1 if labels else 1.0), ytop + 1.3)
    ax.axis("off")

    n_pair_edges = sum(p.num_edges for p in L.plans) - n_loops_edges
    if total_pairs > max_edges:
        shown = f"\ndrawn: the {max_edges:,} strongest of {total_pairs:,} neuron pairs (one line per pair)"
    elif total_pairs != n_pair_edges:
        shown = f"\n{n_pair_edges:,} parameter edges drawn as {total_pairs:,} lines (one per neuron pair)"
    else:
        shown = ""
    head = title or f"Parameter graph ({layout_name} layout, edge width {W})"
    ax.set_title(f"{head}\n{_plural(N, 'node')}, {_plural(E, 'edge')} ({L.num_param_edges:,} parameter, "
                 f"{n_struct:,} structural), {_plural(len(ws.groups), 'neuron group')}, "
                 f"{_plural(ws.num_params, 'weight')}{shown}", fontsize=9)

    handles = [
        Line2D([], [], marker="o", ls="", mfc=NODE_COLORS["free"], mec="#333", label="free neuron (in a group)"),
        Line2D([], [], marker="o", ls="", mfc=NODE_COLORS["fixed"], mec="#333", label="fixed neuron"),
    ]
    if any(c.hub for c in cols):
        handles.append(Line2D([], [], marker="D", ls="", mfc=NODE_COLORS["hub"], mec="#333", label="hub"))
    handles += [
        Line2D([], [], color=POS_COLOR, lw=1.5, label="mean weight > 0"),
        Line2D([], [], color=NEG_COLOR, lw=1.5, label="mean weight < 0"),
        Line2D([], [], color="none", label="opacity: mean |w| / max in tensor"),
    ]
    if n_loops:
        used = {_short(name) for items in loops.values() for name, *_ in items}
        keys = [f"{a} {b}" for a, b in (("w", "weight"), ("b", "bias"), ("μ", "running mean"),
                                         ("σ²", "running var")) if a in used]
        handles.append(Line2D([], [], marker="s", ls="", mfc="#888", mec="none",
                              label="self-loop, one square per tensor" + (f"\n({', '.join(keys)})" if keys else "")))
    for k in ("concat", "product"):
        if (s_kind == k).any():
            handles.append(Line2D([], [], color=STRUCT_COLORS[k], ls=(0, (3, 2)), label=f"structural: {k}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig
