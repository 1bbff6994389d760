"""Reading zoos: :class:`Zoo`, a lazy ``torch.utils.data.Dataset`` of checkpoints.

>>> z = zoo.Zoo.open("zoos/digits")                     # or "hf://user/repo"
>>> len(z), z.steps, z.architectures()
>>> last = z.where(step="last", test_acc=(0.5, 1.0))    # filters return views
>>> train, val, test = last.split([0.8, 0.1, 0.1], seed=0)
>>> sd = train[0]                                        # a state dict
>>> batch = train.stacked(range(32))                     # dict name -> Tensor[32, ...]
>>> graphs = train.graphs(range(32))                     # PyG Batch via metanet.WeightSpace
>>> y = train.targets("test_acc")                        # tensor of a metric

Only the manifest (one small JSON record per checkpoint) is read up front; tensors are
read from the safetensors shards with ``safe_open`` (memory-mapped) when an item is
asked for, so a zoo never has to fit in memory.  Shard handles are opened lazily, kept
in a small per-process cache, and dropped when the object is pickled (DataLoader
workers reopen them).

Field names in :meth:`Zoo.where`, :meth:`Zoo.column` and :meth:`Zoo.targets` are looked
up in the record itself (``id``, ``job``, ``index``, ``step``, ``arch``, ``recipe``,
``dataset``, ``task``, ``seed``, ...), then in ``metrics``, ``hparams``, ``meta`` and
``arch_kwargs``; ``arch_key`` names the architecture with its kwargs.
"""
from __future__ import annotations

import json
import operator
import os
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .hub import hub_file, parse_hub_path
from .models import arch_key, create
from .store import ZooDir, ZooError, read_manifest
from .train import _arch_shapes

__all__ = ["Zoo"]

_TOP_LEVEL = ("id", "job", "index", "step", "arch", "recipe", "dataset", "task", "seed",
              "shard", "prefix", "diverged_at")
_MAX_HANDLES = 32


class _Local:
    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def __repr__(self):
        return str(self.root)


class _Hub:
    def __init__(self, repo_id: str, revision: str | None, cache_dir, token):
        self.repo_id, self.revision, self.cache_dir, self.token = repo_id, revision, cache_dir, token
        self._paths: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self._paths:
            self._paths[name] = hub_file(self.repo_id, name, self.revision, self.cache_dir, self.token)
        return self._paths[name]

    def __repr__(self):
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


class Zoo(Dataset):
    """Checkpoints of a zoo, filtered to a view.  ``zoo[i]`` is a state dict."""

    def __init__(self, source, info: dict, records: list[dict], indices: Sequence[int] | None = None):
        self._source = source
        self.info = info
        self._records = records
        self._idx = np.arange(len(records)) if indices is None else np.asarray(indices, dtype=np.int64)
        self._handles: "OrderedDict[str, Any]" = OrderedDict()
        self._indexes: dict[str, _ShardIndex] = {}
        self._spaces: dict[str, tuple] = {}   # arch_key -> (weight space, its compact layout)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path_or_repo: str | os.PathLike, *, revision: str | None = None,
             cache_dir: str | os.PathLike | None = None, token: str | None = None) -> "Zoo":
        """Open a packed zoo from a folder or a Hub dataset repo ``hf://user/repo[@rev]``."""
        hub = parse_hub_path(path_or_repo)
        if hub is not None:
            repo, rev = hub
            source = _Hub(repo, revision or rev, cache_dir, token)
            try:
                info_path = source.path("zoo.json")
                manifest_path = source.path("manifest.jsonl")
            except Exception as e:
                raise ZooError(f"{source}: cannot fetch zoo.json / manifest.jsonl ({e})") from e
            zd = ZooDir(info_path.parent)
            info = zd.read_info()
            records = read_manifest(manifest_path)
            return cls(source, info, records)
        root = Path(path_or_repo)
        zd = ZooDir(root)
        info = zd.read_info()
        if info is None:
            raise ZooError(f"{zd.info_path}: missing; {root} is not a zoo folder")
        if not zd.manifest_path.exists():
            pending = len(zd.job_files())
            raise ZooError(f"{zd.manifest_path}: missing; the zoo is not packed yet "
                           f"({pending} finished networks in {zd.jobs_dir}): run `metanet zoo pack {root}`")
        return cls(_Local(root), info, zd.manifest())

    # ------------------------------------------------------------------ views
    def _view(self, indices) -> "Zoo":
        z = Zoo(self._source, self.info, self._records, indices)
        z._handles = self._handles  # share open shards between views
        z._indexes = self._indexes
        z._spaces = self._spaces
        return z

    def __len__(self) -> int:
        return len(self._idx)

    def __repr__(self) -> str:
        return f"Zoo({self._source!r}, {len(self)} checkpoints, {len(self.jobs())} networks)"

    @property
    def records(self) -> list[dict]:
        return [self._records[i] for i in self._idx]

    def record(self, i: int) -> dict:
        return self._records[self._idx[self._position(i)]]

    def _position(self, i) -> int:
        """Position ``i`` of this view (negative counts from the end), checked."""
        return self._positions([i])[0]

    def _positions(self, indices: Iterable[int] | None) -> list[int]:
        """Positions in this view (default all), checked: integers in range."""
        n = len(self._idx)
        if indices is None:
            return list(range(n))
        if isinstance(indices, (torch.Tensor, np.ndarray)):
            indices = indices.tolist()
        out, bad = [], []
        for i in indices:
            if isinstance(i, (bool, np.bool_)):
                raise TypeError(f"checkpoint positions are integers, got {i!r}")
            try:
                p = operator.index(i)
            except TypeError:
                raise TypeError(f"checkpoint positions are integers, got {type(i).__name__} {i!r}") from None
            if -n <= p < n:
                out.append(p % n)
            else:
                bad.append(p)
        if bad:
            valid = f"positions 0..{n - 1}" if n else "no positions"
            raise IndexError(f"index {bad[0]} is out of range: this view holds {n} checkpoints ({valid})"
                             + (f"; {len(bad)} of the {len(bad) + len(out)} indices asked for are out of range"
                                if len(bad) > 1 else ""))
        return out

    def subset(self, indices: Iterable[int]) -> "Zoo":
        return self._view(self._idx[np.asarray(self._positions(indices), dtype=np.int64)])

    def jobs(self) -> list[str]:
        return sorted({self._records[i]["job"] for i in self._idx}, key=int)

    @property
    def steps(self) -> list[int]:
        return sorted({int(self._records[i]["step"]) for i in self._idx})

    def architectures(self) -> dict[str, int]:
        """``arch_key -> number of checkpoints`` in this view."""
        out: dict[str, int] = defaultdict(int)
        for r in self.records:
            out[arch_key(r["arch"], r["arch_kwargs"])] += 1
        return dict(out)

    # ------------------------------------------------------------------ fields and filters
    @staticmethod
    def _get(rec: dict, name: str):
        if name == "arch_key":
            return arch_key(rec["arch"], rec["arch_kwargs"])
        if name in _TOP_LEVEL:
            return rec.get(name)
        for section in ("metrics", "hparams", "meta", "arch_kwargs"):
            d = rec.get(section) or {}
            if name in d:
                return d[name]
        raise KeyError(name)

    def column(self, name: str) -> list:
        """Values of field ``name`` for every checkpoint of this view (None if absent)."""
        out = []
        for r in self.records:
            try:
                out.append(self._get(r, name))
            except KeyError:
                out.append(None)
        return out

    def targets(self, name: str, dtype=torch.float32) -> torch.Tensor:
        vals = self.column(name)
        missing = [self.record(i)["id"] for i, v in enumerate(vals) if v is None]
        if missing:
            raise ZooError(f"field {name!r} missing in record(s) {missing[:5]}")
        return torch.tensor(vals, dtype=dtype)

    def where(self, predicate: Callable[[dict], bool] | None = None, **conditions) -> "Zoo":
        """Filter this view.  ``conditions``: ``name=value`` (equality), ``name=(lo, hi)``
        (inclusive range; None for an open end), ``name=[a, b]`` (membership),
        ``name=callable`` (predicate on the value).  ``step="last"`` / ``"first"`` keep
        each network's last / first checkpoint in this view.  ``predicate`` receives the
        whole record.  A record lacking a field does not match.

        A filter that matches nothing in a non-empty view raises ValueError saying which
        condition matched nothing and the values the field takes in this view."""
        keep = []
        step_cond = conditions.get("step")
        special_step = step_cond if step_cond in ("last", "first") else None
        if special_step:
            conditions = {k: v for k, v in conditions.items() if k != "step"}
        for pos, i in enumerate(self._idx):
            rec = self._records[i]
            ok = True
            for name, cond in conditions.items():
                try:
                    v = self._get(rec, name)
                except KeyError:
                    ok = False
                    break
                if not _match(v, cond):
                    ok = False
                    break
            if ok and predicate is not None:
                ok = bool(predicate(rec))
            if ok:
                keep.append(i)
        if special_step:
            best: dict[str, int] = {}
            for i in keep:
                rec = self._records[i]
                j = best.get(rec["job"])
                if j is None:
                    best[rec["job"]] = i
                else:
                    a, b = int(rec["step"]), int(self._records[j]["step"])
                    if (a > b) if special_step == "last" else (a < b):
                        best[rec["job"]] = i
            chosen = set(best.values())
            keep = [i for i in keep if i in chosen]
        if not keep and len(self._idx):
            raise ValueError(self._no_match(conditions, predicate))
        return self._view(keep)

    def _no_match(self, conditions: dict, predicate) -> str:
        """Why ``where(**conditions)`` matched none of this view's checkpoints."""
        n = len(self._idx)
        for name, cond in conditions.items():
            values = []
            for i in self._idx:
                try:
                    values.append(self._get(self._records[i], name))
                except KeyError:
                    pass
            if not values:
                return (f"where({name}=...): no checkpoint of this view ({n}) has a field {name!r}; "
                        f"fields are looked up in the record, then metrics, hparams, meta and arch_kwargs")
            if not any(_match(v, cond) for v in values):
                distinct = _distinct(values)
                shown = ", ".join(repr(v) for v in distinct[:20]) + (", ..." if len(distinct) > 20 else "")
                return (f"where({name}={cond!r}) matches none of the {n} checkpoints of this view; "
                        f"{name} takes the values {shown}")
        if predicate is not None:
            return f"where(): the predicate matches none of the {n} checkpoints of this view"
        conds = ", ".join(f"{k}={v!r}" for k, v in conditions.items())
        return (f"where({conds}): each condition matches some of the {n} checkpoints of this view, "
                f"but no checkpoint matches all of them")

    def split(self, fractions: Sequence[float], seed: int = 0, by: str = "job") -> list["Zoo"]:
        """Seeded random split into views with the given fractions of groups.

        Groups are the distinct values of field ``by`` (default ``"job"``: all
        checkpoints of one network land in the same part; for INR zoos ``by="image"``
        keeps all views of an image together).  Fractions are normalized if they sum to
        more than 1; the last part takes the rounding remainder."""
        if isinstance(fractions, (int, float)):
            raise TypeError(f"split() takes a sequence of fractions, one per part (e.g. [0.7, 0.15, 0.15]), "
                            f"got the number {fractions!r}")
        fractions = [float(f) for f in fractions]
        if not fractions or any(f < 0 for f in fractions):
            raise ValueError(f"bad split fractions {fractions}: give one non-negative fraction per part")
        total = sum(fractions)
        if total > 1 + 1e-9:
            fractions = [f / total for f in fractions]
            total = 1.0
        groups: dict[Any, list[int]] = defaultdict(list)
        for i in self._idx:
            try:
                key = self._get(self._records[i], by)
            except KeyError:
                raise ZooError(f"split(by={by!r}): record {self._records[i]['id']} lacks that field") from None
            groups[json.dumps(key, sort_keys=True)].append(i)
        keys = sorted(groups)
        order = np.random.default_rng(seed).permutation(len(keys))
        bounds = np.round(np.cumsum([0.0] + fractions) * len(keys)).astype(int)
        if abs(total - 1.0) < 1e-9:
            bounds[-1] = len(keys)
        parts = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            idx = sorted(i for k in order[a:b] for i in groups[keys[k]])
            parts.append(self._view(idx))
        return parts

    # ------------------------------------------------------------------ tensors
    def _handle(self, shard: str, rec_id: str):
        from safetensors import safe_open

        h = self._handles.get(shard)
        if h is not None:
            self._handles.move_to_end(shard)
            return h
        try:
            path = self._source.path(shard)
        except Exception as e:
            raise ZooError(f"{self._source}: cannot get shard {shard} (needed by record {rec_id}): {e}") from e
        if not Path(path).exists():
            raise ZooError(f"{path}: shard missing (needed by record {rec_id})")
        try:
            h = safe_open(str(path), framework="pt")
        except Exception as e:
            raise ZooError(f"{path}: unreadable safetensors shard ({e}); needed by record {rec_id}. "
                           f"Check the zoo with `metanet zoo verify`") from None
        self._handles[shard] = h
        while len(self._handles) > _MAX_HANDLES:
            self._handles.popitem(last=False)
        return h

    def _expected(self, rec: dict) -> dict[str, tuple] | None:
        try:
            return _arch_shapes(rec["arch"], json.dumps(rec["arch_kwargs"], sort_keys=True))
        except Exception:
            return None  # architecture unknown to this registry: read what the shard holds

    def _keys(self, rec: dict, h) -> list[str]:
        exp = self._expected(rec)
        if exp is not None:
            return list(exp)
        p = rec["prefix"]
        return sorted(k[len(p):] for k in h.keys() if k.startswith(p))

    def _read(self, rec: dict) -> dict[str, torch.Tensor]:
        h = self._handle(rec["shard"], rec["id"])
        exp = self._expected(rec)
        keys = list(exp) if exp is not None else self._keys(rec, h)
        out = {}
        for k in keys:
            try:
                t = h.get_tensor(rec["prefix"] + k)
            except Exception:
                raise ZooError(f"record {rec['id']}: tensor {rec['prefix'] + k!r} missing from "
                               f"{self._source.path(rec['shard'])}") from None
            if exp is not None and tuple(t.shape) != exp[k][0]:
                raise ZooError(f"record {rec['id']} ({rec['shard']}): tensor {k!r} has shape "
                               f"{tuple(t.shape)}, architecture {rec['arch']} expects {exp[k][0]}")
            out[k] = t
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if isinstance(i, slice):
            raise TypeError("use zoo.subset(range(...)) for a slice of a zoo")
        return self._read(self._records[self._idx[self._position(i)]])

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        return self[i]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self)):
            yield self[i]

    def _signature(self, rec: dict):
        exp = self._expected(rec)
        if exp is None:
            return arch_key(rec["arch"], rec["arch_kwargs"])
        return tuple((k, v[0], v[1]) for k, v in exp.items())

    def _one_arch(self, positions: Sequence[int]) -> tuple[dict, list[dict]]:
        """Records at ``positions``; they must share one parameter signature (names,
        shapes, dtypes) -- e.g. the same network with different dropout or activation."""
        recs = [self._records[self._idx[p]] for p in positions]
        if not recs:
            raise ValueError("no checkpoints selected")
        sigs = {self._signature(r) for r in recs}
        if len(sigs) > 1:
            keys = sorted({arch_key(r["arch"], r["arch_kwargs"]) for r in recs})
            raise ZooError(f"stacking needs checkpoints with the same parameter names and shapes; "
                           f"the selection holds {len(sigs)} different ones, e.g. {keys[:2]}. "
                           f"Filter first, e.g. zoo.where(arch=..., arch_key=...)")
        return recs[0], recs

    def _index(self, shard: str, rec_id: str) -> "_ShardIndex":
        idx = self._indexes.get(shard)
        if idx is None:
            path = self._source.path(shard)
            self._handle(shard, rec_id)  # same checks and errors as single reads
            idx = self._indexes[shard] = _ShardIndex(path)
            while len(self._indexes) > _MAX_HANDLES:
                self._indexes.pop(next(iter(self._indexes)))
        return idx

    def _stack_fast(self, recs: list[dict], exp: dict) -> dict[str, torch.Tensor] | None:
        """Gather whole checkpoints as contiguous blocks from memory-mapped shards.

        In a shard, the tensors of one checkpoint share a key prefix and safetensors
        lays them out back to back, so one checkpoint is one slice of the file.  Each
        record's layout (relative offsets, extent) is checked against the expected one,
        and names, dtypes and shapes against the architecture for the first record of
        every shard; anything unusual returns None (per-tensor path)."""
        keys = list(exp)
        dtypes = {exp[k][1] for k in keys}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _NP_DTYPES:
            return None
        dt = exp[keys[0]][1]
        np_dtype = _NP_DTYPES[dt]
        size = np.dtype(np_dtype).itemsize
        numel = np.array([int(np.prod(exp[k][0], dtype=np.int64)) for k in keys])
        total = int(numel.sum())
        out = np.empty((len(recs), total), dtype=np_dtype)
        layout = None
        by_shard: dict[str, list[int]] = defaultdict(list)
        for b, rec in enumerate(recs):
            by_shard[rec["shard"]].append(b)
        for shard, rows in by_shard.items():
            idx = self._index(shard, recs[rows[0]]["id"])
            ents = idx.entries
            first = [ents.get(recs[rows[0]]["prefix"] + k) for k in keys]
            if any(e is None or e["dtype"] != _ST_DTYPES[dt] or tuple(e["shape"]) != exp[k][0]
                   for k, e in zip(keys, first)):
                return None
            try:
                starts = np.array([[ents[recs[b]["prefix"] + k]["data_offsets"][0] for k in keys]
                                   for b in rows], dtype=np.int64)
            except KeyError:
                return None
            s0 = starts.min(1)
            rel = starts - s0[:, None]
            if layout is None:
                layout = rel[0]
                order = np.argsort(layout)
                # back to back: each tensor starts where the previous one ends
                if layout[order[0]] != 0 or np.any(np.diff(layout[order]) != numel[order[:-1]] * size):
                    return None
            if np.any(rel != layout) or np.any(s0 % size):
                return None
            arr = np.frombuffer(idx.mm, dtype=np_dtype, offset=idx.base,
                                count=(len(idx.mm) - idx.base) // size)
            first_el = s0 // size
            if first_el.max() + total > len(arr):
                return None
            for b, e in zip(rows, first_el.tolist()):
                out[b] = arr[e:e + total]
        t = torch.from_numpy(out)
        el = (layout // size).tolist()
        return {k: t[:, r:r + int(n)].reshape(len(recs), *exp[k][0]).contiguous()
                for k, r, n in zip(keys, el, numel)}

    def stacked(self, indices: Iterable[int] | None = None) -> dict[str, torch.Tensor]:
        """Checkpoints ``indices`` (positions in this view; default all) of ONE
        parameter signature as ``{name: Tensor[B, *shape]}``.

        Float-only architectures take a bulk path (one slice of a memory-mapped shard
        per checkpoint); others, or anything unusual, read tensor by tensor."""
        positions = self._positions(indices)
        first, recs = self._one_arch(positions)
        exp = self._expected(first)
        if exp is not None:
            try:
                fast = self._stack_fast(recs, exp)
            except (OSError, ValueError):
                fast = None
            if fast is not None:
                return fast
        sd0 = self._read(first)
        out = {k: torch.empty((len(recs), *v.shape), dtype=v.dtype) for k, v in sd0.items()}
        for b, rec in enumerate(recs):
            sd = sd0 if b == 0 else self._read(rec)
            for k, v in sd.items():
                out[k][b] = v
        return out

    def model(self, i: int) -> torch.nn.Module:
        """The architecture of checkpoint ``i`` with its weights loaded (eval mode)."""
        rec = self.record(i)
        with torch.random.fork_rng(devices=[]):   # building it leaves the caller's random stream alone
            m = create(rec["arch"], **rec["arch_kwargs"])
        try:
            m.load_state_dict(self[i])
        except RuntimeError as e:
            raise ZooError(f"record {rec['id']} ({rec['shard']}): checkpoint does not match "
                           f"architecture {rec['arch']} {rec['arch_kwargs']}: {e}") from None
        return m.eval()

    @staticmethod
    def _graph_kwargs(rec: dict) -> dict:
        # dropout has no parameters and is the identity in eval mode (how models are
        # traced): networks differing only in dropout share one weight space
        kw = dict(rec["arch_kwargs"])
        if "dropout" in kw:
            kw["dropout"] = 0.0
        return kw

    def weight_space(self, i: int = 0):
        """The ``metanet.WeightSpace`` of checkpoint ``i``'s architecture (cached by
        metanet per architecture). This zoo and its views also hold each space they
        returned, with its compact graph layout, by architecture: a zoo of many
        architectures (a mixed batch converts each anew) would otherwise build the model
        to look its space up, and the layout again, every time (metanet keeps only the most
        recent layouts alive)."""
        from metanet import WeightSpace

        rec = self.record(i)
        kw = self._graph_kwargs(rec)
        key = arch_key(rec["arch"], kw)
        held = self._spaces.get(key)
        if held is None:
            # building and tracing the model draws random numbers (initialisation, example
            # input): forked, so that the caller's stream does not depend on whether this
            # architecture was looked up before (a seeded training run would otherwise start
            # from other weights when an earlier run in the process had traced its zoo)
            with torch.random.fork_rng(devices=[]):
                m = create(rec["arch"], **kw)
                ws = WeightSpace.of(m, m.example_input())
            try:
                lay = ws.layout("compact")
            except Exception:   # not graphable here: the error comes back where a graph is asked for
                lay = None
            held = self._spaces[key] = (ws, lay)
        return held[0]

    def graphs(self, indices: Iterable[int] | None = None, layout: str = "compact"):
        """Parameter graphs of checkpoints ``indices`` as one PyG Batch, built from
        stacked tensors by ``WeightSpace.graphs``.  Checkpoints must share parameter
        shapes; if they differ in activation (a different weight space), each kind is
        converted separately and the graphs are merged in the order asked for."""
        positions = self._positions(indices)
        self._one_arch(positions)
        kinds: dict[str, list[int]] = defaultdict(list)
        for p in positions:
            rec = self.record(p)
            kinds[arch_key(rec["arch"], self._graph_kwargs(rec))].append(p)
        if len(kinds) == 1:
            return self.weight_space(positions[0]).graphs(self.stacked(positions), layout=layout)
        from torch_geometric.data import Batch

        data = {}
        for group in kinds.values():
            b = self.weight_space(group[0]).graphs(self.stacked(group), layout=layout)
            for p, d in zip(group, b.to_data_list()):
                data[p] = d
        return Batch.from_data_list([data[p] for p in positions])

    def graph(self, i: int, layout: str = "compact"):
        return self.weight_space(i).graph(self[i], layout=layout)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                form: str = "stacked", target: str | None = None, layout: str = "compact"):
        """Iterate over minibatches: ``form`` is ``"stacked"`` (dict of stacked tensors),
        ``"graphs"`` (PyG Batch) or ``"state_dicts"`` (list).  With ``target``, yields
        ``(batch, targets)``.  Shuffling is seeded."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for a in range(0, len(order), batch_size):
            pos = order[a:a + batch_size].tolist()
            if form == "stacked":
                batch = self.stacked(pos)
            elif form == "graphs":
                batch = self.graphs(pos, layout=layout)
            elif form == "state_dicts":
                batch = [self[p] for p in pos]
            else:
                raise ValueError(f"unknown form {form!r} (stacked, graphs, state_dicts)")
            if target is None:
                yield batch
            else:
                yield batch, self.subset(pos).targets(target)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        state["_indexes"] = {}
        state["_spaces"] = {}
        return state


_NP_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}
_ST_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16"}


class _ShardIndex:
    """A shard's parsed safetensors header and a read-only memory map of it."""

    def __init__(self, path):
        import struct

        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = header
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")


def _distinct(values: list) -> list:
    """Distinct values, sorted where they compare."""
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(json.dumps(v, sort_keys=True, default=repr), v)
    try:
        return sorted(seen.values())
    except TypeError:
        return sorted(seen.values(), key=repr)


def _match(v, cond) -> bool:
    if callable(cond):
        return bool(cond(v))
    if isinstance(cond, tuple):
        if len(cond) != 2:
            raise ValueError(f"a range condition is a (lo, hi) pair, got {cond}")
        lo, hi = cond
        if v is None or not isinstance(v, (int, float)):
            return False
        return (lo is None or v >= lo) and (hi is None or v <= hi)
    if isinstance(cond, (list, set, frozenset)):
        return v in cond
    return v == cond
