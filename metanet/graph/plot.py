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


def _first_reads(ws) -> dict[str, int]:
    """Canonical weight name -> index of the first op that reads it."""
    first: dict[str, int] = {}
    for node in ws.op_graph.nodes:
        for p in node.params:
            first.setdefault(ws.aliases.get(p, p), node.index)
    return first


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _set_label(ws, col: _Column) -> str:
    gid = getattr(ws, "_group_of_space", {})
    if col.hub:
        return f"hub\n{col.key[1]}"

    def atom(a):
        return f"g{gid[a]}" if a in gid else f"f{a}"

    if col.fixed:
        role = {"in": "input", "out": "output"}.get(col.first_role, "fixed")
        return f"{role} ({col.size})\n{_module(col.first_weight)}"
    segs = ["×".join(atom(a) for a in seg) for seg in col.key]
    name = segs[0] if len(segs) == 1 else "cat(" + ", ".join(segs) + ")"
    where = _module(col.first_weight) if col.first_role == "out" else ""
    return f"{name} ({col.size})" + (f"\n{where}" if where else "")


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
               labels: bool = True, seed: int = 0):
    """Draw the parameter graph ``graph`` of weight space ``ws``; save a PNG to ``path``
    (if given) and return the matplotlib figure.

    ``graph`` is one graph from ``ws.graph(sd, layout)``; a batch from ``ws.graphs`` is
    drawn from its first graph. At most ``max_edges`` parameter edges (neuron pairs)
    are drawn: past that, the strongest ones (largest mean |w| relative to their
    tensor) are kept and the title says how many are shown.
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
    edge_attr = graph.edge_attr[:E].detach().to("cpu", torch.float64)
    edge_index = L.edge_index  # the layout's own (one graph, no batch offsets)
    node_set = L.x.new_zeros(N, dtype=torch.long)

    sets = list(L.sets.values())
    cols = [_Column(i, s.key, s.offset, s.size, s.fixed, s.hub) for i, s in enumerate(sets)]
    for c in cols:
        node_set[c.offset:c.offset + c.size] = c.set_index

    # -- per plan: which sets it touches, merged (pair) values --------------------------------
    first = _first_reads(ws)
    order = {name: r for r, name in enumerate(sorted(ws.weights, key=lambda n: (first.get(n, 10 ** 9), ws.weights.index(n))))}
    pair_src, pair_dst, pair_val, pair_mag, pair_tensor = [], [], [], [], []
    loops: dict[int, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    for t, p in enumerate(L.plans):
        ne = p.num_edges
        if ne == 0:
            continue
        sl = slice(p.edge_offset, p.edge_offset + ne)
        vals = edge_attr[sl].reshape(p.n_out * p.n_in, p.chunks * W)[:, :p.feat]
        mean, mag = vals.mean(1), vals.abs().mean(1)
        mag = mag / mag.max() if mag.max() > 0 else mag
        src = edge_index[0, sl][::p.chunks]
        dst = edge_index[1, sl][::p.chunks]
        r = order[p.name]
        out_col = cols[int(node_set[dst[0]])]
        self_loop = bool((src == dst).all())
        if self_loop:
            out_col.rank = min(out_col.rank, 2 * r + 1)
            if out_col.rank == 2 * r + 1 and not out_col.first_role:
                out_col.first_role, out_col.first_weight = "self", p.name
            loops.setdefault(out_col.set_index, []).append((p.name, dst, mean, mag))
            continue
        in_col = cols[int(node_set[src[0]])]
        for col, rk, role in ((in_col, 2 * r, "in"), (out_col, 2 * r + 1, "out")):
            if rk < col.rank:
                col.rank, col.first_role, col.first_weight = rk, role, p.name
        pair_src.append(src)
        pair_dst.append(dst)
        pair_val.append(mean)
        pair_mag.append(mag)
        pair_tensor.append(torch.full_like(src, t))

    # structural edges
    st = slice(L.num_param_edges, E)
    s_src, s_dst, s_typ = edge_index[0, st], edge_index[1, st], L.edge_type[st] - len(L.plans)
    # sets touched only by structural edges sit just left of where they lead
    for _ in range(2):
        for a, b in zip(node_set[s_src].tolist(), node_set[s_dst].tolist()):
            if cols[a].rank == float("inf") and cols[b].rank < float("inf"):
                cols[a].rank = cols[b].rank - 0.5
            if cols[b].rank == float("inf") and cols[a].rank < float("inf"):
                cols[b].rank = cols[a].rank + 0.5
    # hubs of one tensor: at that tensor's place
    for c in cols:
        if c.hub and c.rank == float("inf") and c.key[1] in order:
            c.rank = 2 * order[c.key[1]] + 1
    ranked = sorted(cols, key=lambda c: (c.rank, c.set_index))
    xcol = {c.set_index: i for i, c in enumerate(ranked)}

    # -- node positions ------------------------------------------------------------------
    tallest = max([min(c.size, MAX_COLUMN) for c in cols] + [1])
    pos = np.zeros((N, 2))
    spacing = {}
    for c in cols:
        h = min(c.size, MAX_COLUMN)
        step = (h / c.size) if c.size > 0 else 1.0
        spacing[c.set_index] = step
        ys = (np.arange(c.size) - (c.size - 1) / 2) * step
        pos[c.offset:c.offset + c.size, 0] = xcol[c.set_index] * 3.0
        pos[c.offset:c.offset + c.size, 1] = -ys  # first neuron on top

    ncols = len(ranked)
    if figsize is None:
        figsize = (min(max(6.0, 1.25 * ncols + 2.5), 30.0), min(max(4.5, 0.2 * tallest + 2.8), 20.0))
    fig = Figure(figsize=figsize)  # no pyplot: no global state, no GUI backend
    ax = fig.subplots()

    # -- parameter edges -----------------------------------------------------------------
    total_pairs = 0
    if pair_src:
        src, dst = torch.cat(pair_src), torch.cat(pair_dst)
        val, mag = torch.cat(pair_val), torch.cat(pair_mag)
        total_pairs = len(src)
        if total_pairs > max_edges:
            keep = torch.topk(mag, max_edges).indices
            src, dst, val, mag = src[keep], dst[keep], val[keep], mag[keep]
        # faint first, strong on top
        o = torch.argsort(mag)
        src, dst, val, mag = src[o], dst[o], val[o], mag[o]
        p0, p1 = pos[src.numpy()], pos[dst.numpy()]
        colors = _rgba(val, mag)
        xs0, xs1 = p0[:, 0], p1[:, 0]
        straight = np.abs(xs1 - xs0 - 3.0) < 1e-9  # to the next column
        lw = 0.4 + 1.0 * mag.numpy()
        if straight.any():
            segs = np.stack([p0[straight], p1[straight]], axis=1)
            ax.add_collection(LineCollection(segs, colors=colors[straight], linewidths=lw[straight],
                                             zorder=1, capstyle="round"))
        if (~straight).any():
            paths = []
            for (x0, y0), (x1, y1) in zip(p0[~straight], p1[~straight]):
                span = abs(x1 - x0) / 3.0
                bend = 0.6 + 0.9 * span if x1 != x0 else 1.2
                cx, cy = (x0 + x1) / 2, max(y0, y1) + bend * (1.0 if x1 >= x0 else -1.0)
                if x1 == x0:
                    cx = x0 + 1.2
                paths.append(MPath([(x0, y0), (cx, cy), (x1, y1)],
                                   [MPath.MOVETO, MPath.CURVE3, MPath.CURVE3]))
            ax.add_collection(PathCollection(paths, facecolors="none", edgecolors=colors[~straight],
                                             linewidths=lw[~straight], zorder=1))

    # -- structural edges ----------------------------------------------------------------
    n_struct = int(s_src.numel())
    if n_struct:
        kinds = np.array(["concat", "product"])[s_typ.clamp(0, 1).numpy()]
        segs = np.stack([pos[s_src.numpy()], pos[s_dst.numpy()]], axis=1)
        ax.add_collection(LineCollection(segs, colors=[STRUCT_COLORS[k] for k in kinds],
                                         linestyles=(0, (3, 2)), linewidths=0.9, alpha=0.8, zorder=1))

    # -- nodes ---------------------------------------------------------------------------
    node_size = float(np.clip(900.0 / max(tallest, 1), 6, 60))
    for kind, sel in (("free", lambda c: not c.fixed), ("fixed", lambda c: c.fixed and not c.hub),
                      ("hub", lambda c: c.hub)):
        idx = [i for c in cols if sel(c) for i in range(c.offset, c.offset + c.size)]
        if idx:
            ax.scatter(pos[idx, 0], pos[idx, 1], s=node_size, c=NODE_COLORS[kind],
                       marker="D" if kind == "hub" else "o", edgecolors="#333333",
                       linewidths=0.6, zorder=3)

    # -- self-loops: one small square per tensor, right of the node ---------------------------
    n_loops = 0
    for si, items in loops.items():
        step = spacing[si]
        msize = float(np.clip(node_size * 0.35 * min(step, 1.0), 2, 14))
        for j, (_, nodes, mean, mag) in enumerate(items):
            xy = pos[nodes.numpy()].copy()
            xy[:, 0] += 0.38 + 0.3 * j
            ax.scatter(xy[:, 0], xy[:, 1], s=msize, marker="s", c=_rgba(mean, mag, lo=0.15),
                       linewidths=0, zorder=4)
            n_loops += len(nodes)

    # -- labels --------------------------------------------------------------------------
    ymin = pos[:, 1].min() if N else 0.0
    ymax = pos[:, 1].max() if N else 0.0
    if labels:
        for c in ranked:
            c.label = _set_label(ws, c)
            ax.text(xcol[c.set_index] * 3.0, ymin - 0.9, c.label, ha="center", va="top",
                    fontsize=7, rotation=0 if ncols <= 10 else 35, rotation_mode="anchor")
        # which tensors the self-loop squares stand for, for small graphs
        if ncols <= 12:
            for si, items in loops.items():
                c = cols[si]
                top = pos[c.offset, 1]
                names = [n.rsplit(".", 1)[-1] for n, *_ in items]
                ax.text(xcol[si] * 3.0 + 0.38, top + 0.55, " ".join(f"{k + 1}:{n}" for k, n in enumerate(names)),
                        fontsize=6, color="#555555", ha="left", va="bottom")

    pad_top = 1.6
    ax.set_xlim(-1.5, (ncols - 1) * 3.0 + 2.0)
    ax.set_ylim(ymin - (4.0 if labels else 1.0), ymax + pad_top + 0.2 * tallest / 4)
    ax.set_aspect("auto")
    ax.axis("off")

    n_groups = len(ws.groups)
    shown = f"; showing the {max_edges:,} strongest of {total_pairs:,} neuron pairs" if total_pairs > max_edges else ""
    head = title or f"Parameter graph ({layout_name} layout, width {W})"
    ax.set_title(f"{head}\n{N:,} nodes, {E:,} edges ({L.num_param_edges:,} parameter, {n_struct:,} structural), "
                 f"{n_groups} neuron groups, {ws.num_params:,} weights{shown}", fontsize=9)

    handles = [
        Line2D([], [], marker="o", ls="", mfc=NODE_COLORS["free"], mec="#333", label="free neuron (group)"),
        Line2D([], [], marker="o", ls="", mfc=NODE_COLORS["fixed"], mec="#333", label="fixed neuron"),
        Line2D([], [], color=POS_COLOR, lw=1.5, label="weight > 0 (opacity: |w|)"),
        Line2D([], [], color=NEG_COLOR, lw=1.5, label="weight < 0"),
    ]
    if any(c.hub for c in cols):
        handles.insert(2, Line2D([], [], marker="D", ls="", mfc=NODE_COLORS["hub"], mec="#333", label="hub"))
    if n_loops:
        handles.append(Line2D([], [], marker="s", ls="", mfc="#888", mec="none",
                              label="self-loop (bias, norm, ...)"))
    if n_struct:
        for k in ("concat", "product"):
            if (np.array(["concat", "product"])[s_typ.clamp(0, 1).numpy()] == k).any():
                handles.append(Line2D([], [], color=STRUCT_COLORS[k], ls=(0, (3, 2)), label=f"structural: {k}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig
