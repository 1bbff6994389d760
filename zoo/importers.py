"""Importers for public zoo formats.  Each writes an ordinary metanet zoo (job files,
then packed shards + manifest), mapping the networks onto registry architectures so
that every checkpoint loads into ``zoo.create(record["arch"], **record["arch_kwargs"])``.

``smallcnnzoo`` — the Small CNN Zoo (Unterthiner et al. 2020).  A folder with
    ``weights.npy`` (one flat float vector per row, TensorFlow layout), ``layout.csv``
    (``varname,start_idx,end_idx,size,shape``) and ``metrics.csv.gz`` (one row per
    weights row: ``modeldir``, ``step``, ``train/test_accuracy``, ``train/test_loss``,
    ``config.*`` hyperparameters).  Rows sharing ``modeldir`` are the checkpoints of one
    network.  Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in); the
    network becomes ``small_cnn`` (stride 2, 'valid' padding, recorded activation).

``modelzoos`` — the Model Zoos of Schürholt et al. (2022).  A folder of trial folders,
    each with ``params.json`` (``model::type``, ``model::nlin``, ``model::dropout``,
    ``model::channels_in``, ``optim::*``, ``seed`` ...), ``result.json`` (one JSON line
    per epoch with ``training_iteration`` and ``train_acc``/``test_acc``/``*_loss``) and
    ``checkpoint_<epoch>/checkpoints`` (a ``torch.save`` d state dict).  Becomes
    ``modelzoo_cnn`` (same parameter names).

``dwsnets`` — the MNIST/Fashion INRs of DWSNets (Navon et al. 2023): one ``.pth``
    state dict per INR (``seq.{i}.weight/bias``), in folders named like
    ``mnist_png_training_<label>_<n>/checkpoints/model_final.pth`` (label and split are
    read from the path, as DWSNets' split script does).

``nfn`` — a folder per class (``<root>/<class>/**/*.pth``), each file one SIREN state
    dict (NFN's ``net.{i}.linear.weight`` + final ``net.{N}.weight``, or DWSNets' keys).

INR checkpoints are stored at step 0 (the source holds only final fits) and carry
``meta.label``/``meta.split``; their sources record no metrics (``meta.no_metrics``).

Checkpoint files are loaded with ``torch.load(weights_only=True)`` (or safetensors);
a file that needs full pickle is refused with :class:`PickleRefusedError`, whose
message says how to convert it.  ``.npy`` files are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import ast
import csv
import gzip
import json
import math
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .models import create
from .store import DEFAULT_SHARD_BYTES, ZooDir, ZooError, pack
from .train import Job, JobResult

__all__ = ["import_zoo", "import_smallcnnzoo", "import_modelzoos", "import_dwsnets",
           "import_nfn", "load_checkpoint_file", "PickleRefusedError", "FORMATS"]


class PickleRefusedError(ZooError):
    """A checkpoint file needs full pickle (arbitrary code) to load; it is refused."""


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` without running code from it.

    ``.safetensors`` via safetensors; anything else via ``torch.load(weights_only=True)``.
    Dicts wrapping the state dict under ``state_dict`` / ``model_state_dict`` / ``model``
    are unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ZooError(f"{path}: unreadable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PickleRefusedError(
            f"{path}: refusing to load: the file needs full pickle, which can run arbitrary code "
            f"({str(e).splitlines()[0][:200]}). If you trust its origin, convert it once to "
            f"safetensors and import the converted file:\n"
            f"  python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('{path}', weights_only=False, map_location='cpu'); "
            f"sd = sd.get('state_dict', sd) if isinstance(sd, dict) else sd.state_dict(); "
            f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{path.with_suffix('.safetensors')}')\"") from None
    except Exception as e:
        raise ZooError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    raise ZooError(f"{path}: holds no state dict (a dict of tensors, possibly under "
                   f"'state_dict' / 'model_state_dict' / 'model'); found {type(obj).__name__}")


def _finite(sd: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())


def _num(v):
    """CSV / JSON value -> int, float, bool or str (NaN -> None)."""
    if isinstance(v, (int, float, bool)) or v is None:
        return None if isinstance(v, float) and math.isnan(v) else v
    s = str(v).strip()
    if s in ("True", "true"):
        return True
    if s in ("False", "false"):
        return False
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
        return None if math.isnan(f) else f
    except ValueError:
        return s


def _check_against_arch(sd: dict, arch: str, kwargs: dict, where) -> dict:
    """Re-key ``sd`` to the architecture's names (by order, if the names differ) and
    check shapes; returns the state dict in the architecture's order."""
    model = create(arch, **kwargs)
    ref = model.state_dict()
    if set(sd) == set(ref):
        pairs = [(k, sd[k]) for k in ref]
    else:
        src = [(k, v) for k, v in sd.items()]
        if len(src) != len(ref):
            raise ZooError(f"{where}: {len(src)} tensors, architecture {arch} {kwargs} has {len(ref)} "
                           f"({list(sd)[:6]}... vs {list(ref)[:6]}...)")
        pairs = [(k, v) for k, (_, v) in zip(ref, src)]
    out = {}
    for k, v in pairs:
        if tuple(v.shape) != tuple(ref[k].shape):
            raise ZooError(f"{where}: tensor for {k!r} has shape {tuple(v.shape)}, architecture "
                           f"{arch} {kwargs} expects {tuple(ref[k].shape)}")
        out[k] = v.to(ref[k].dtype).contiguous()
    return out


def _write(out, build: dict, results: Callable[[set], Iterator[JobResult]], *,
           shard_bytes: int, progress: bool, total: int | None) -> dict:
    zd = ZooDir(out)
    zd.root.mkdir(parents=True, exist_ok=True)
    zd.init(build)
    done = zd.done_job_ids()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"import {build['source_format']}", unit="net")
    n = 0
    try:
        for res in results(done):
            zd.write_job(res)
            n += 1
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    summary = pack(out, shard_bytes=shard_bytes, progress=progress)
    return {"imported": n, "skipped_existing": len(done), **summary}


# ------------------------------------------------------------------------ Small CNN Zoo
_INPUT_SIZE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32, "svhn": 32}


def _read_layout(path: Path) -> list[dict]:
    if not path.exists():
        raise ZooError(f"{path}: missing (the Small CNN Zoo's parameter layout)")
    rows = []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), 2):
            try:
                rows.append({"varname": row["varname"], "start": int(row["start_idx"]),
                             "end": int(row["end_idx"]),
                             "shape": tuple(ast.literal_eval(row["shape"]))})
            except (KeyError, ValueError, SyntaxError) as e:
                raise ZooError(f"{path}:{lineno}: bad layout row {row} ({e})") from None
    return rows


def _tf_to_torch_name(varname: str) -> tuple[str, str]:
    """'sequential/conv2d_1/kernel:0' -> ('convs.1.weight', 'conv')."""
    m = re.fullmatch(r"(?:.*/)?(conv2d|dense)(?:_(\d+))?/(kernel|bias):0", varname)
    if not m:
        raise ZooError(f"layout variable {varname!r} is not a conv2d/dense kernel or bias")
    layer, idx, kind = m.group(1), int(m.group(2) or 0), m.group(3)
    if layer == "dense":
        if idx:
            raise ZooError(f"layout variable {varname!r}: the Small CNN Zoo network has one dense layer")
        base = "fc"
    else:
        base = f"convs.{idx}"
    return f"{base}.{'weight' if kind == 'kernel' else 'bias'}", layer


def import_smallcnnzoo(source, out, *, limit: int | None = None, skip_nonfinite: bool = True,
                       shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = False) -> dict:
    source = Path(source)
    wpath = source / "weights.npy"
    mpath = source / "metrics.csv.gz"
    if not wpath.exists():
        raise ZooError(f"{wpath}: missing (Small CNN Zoo weights)")
    try:
        weights = np.load(wpath, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise PickleRefusedError(f"{wpath}: refusing to load: {e}. The Small CNN Zoo's weights.npy "
                                 f"is a plain float array; re-save a trusted copy with "
                                 f"np.save(path, np.asarray(arr, dtype=np.float32))") from None
    if weights.ndim != 2:
        raise ZooError(f"{wpath}: expected a 2-d array [checkpoints, parameters], got shape {weights.shape}")
    layout = _read_layout(source / "layout.csv")
    if not mpath.exists():
        raise ZooError(f"{mpath}: missing (Small CNN Zoo metrics)")
    with gzip.open(mpath, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(weights):
        raise ZooError(f"{mpath}: {len(rows)} rows but {wpath} has {len(weights)} weight vectors")
    width = max(r["end"] for r in layout)
    if width > weights.shape[1]:
        raise ZooError(f"{source / 'layout.csv'}: layout needs {width} values per row, "
                       f"{wpath} rows have {weights.shape[1]}")
    names = {r["varname"]: _tf_to_torch_name(r["varname"]) for r in layout}
    shapes = {names[r["varname"]][0]: r["shape"] for r in layout}
    n_conv = sum(1 for n in shapes if n.startswith("convs.") and n.endswith(".weight"))
    if "fc.weight" not in shapes or n_conv == 0:
        raise ZooError(f"{source / 'layout.csv'}: expected conv2d layers and one dense layer")
    k0 = shapes["convs.0.weight"]
    base_kwargs = dict(in_channels=int(k0[2]), n_classes=int(shapes["fc.weight"][1]),
                       channels=int(k0[3]), n_layers=n_conv, kernel_size=int(k0[0]),
                       stride=2, padding=0)

    groups: "OrderedDict[str, list[int]]" = OrderedDict()
    for i, row in enumerate(rows):
        groups.setdefault(row.get("modeldir") or f"row{i}", []).append(i)
    items = list(groups.items())[: limit if limit is not None else None]

    def results(done: set) -> Iterator[JobResult]:
        for index, (modeldir, row_ids) in enumerate(items):
            if f"{index:06d}" in done:
                continue
            row_ids = sorted(row_ids, key=lambda i: _num(rows[i].get("step", 0)) or 0)
            cfg = {k[len("config."):]: _num(v) for k, v in rows[row_ids[0]].items()
                   if k.startswith("config.")}
            act = str(cfg.get("activation") or "relu").lower()
            dataset = str(cfg.get("dataset") or "unknown")
            kw = dict(base_kwargs, activation=act, dropout=float(cfg.get("dropout") or 0.0),
                      input_size=_INPUT_SIZE.get(dataset, 32))
            steps, sds, metrics, kept_rows = [], [], [], []
            for i in row_ids:
                flat = np.array(weights[i], dtype=np.float32)
                sd = {}
                for r in layout:
                    name, kind = names[r["varname"]]
                    a = flat[r["start"]:r["end"]].reshape(r["shape"])
                    if name.endswith(".weight"):
                        a = a.transpose(3, 2, 0, 1) if kind == "conv2d" else a.T
                    sd[name] = torch.from_numpy(np.ascontiguousarray(a))
                sd = _check_against_arch(sd, "small_cnn", kw, f"{wpath} row {i} ({modeldir})")
                m = {"train_loss": _num(rows[i].get("train_loss")),
                     "train_acc": _num(rows[i].get("train_accuracy")),
                     "test_loss": _num(rows[i].get("test_loss")),
                     "test_acc": _num(rows[i].get("test_accuracy"))}
                m = {k: v for k, v in m.items() if v is not None}
                if skip_nonfinite and (not _finite(sd) or len(m) < 4):
                    continue
                steps.append(int(_num(rows[i].get("step", 0)) or 0))
                sds.append(sd)
                metrics.append(m)
                kept_rows.append(i)
            if not steps:
                continue
            job = Job(index=index, recipe="import:smallcnnzoo", arch="small_cnn", arch_kwargs=kw,
                      task="classify", dataset=dataset,
                      hparams={k: v for k, v in cfg.items() if k not in ("dataset",)},
                      seed=int(cfg.get("random_seed") or 0), steps=steps,
                      meta={"modeldir": modeldir, "rows": kept_rows})
            yield JobResult(job, steps, sds, metrics)

    build = {"source_format": "smallcnnzoo", "source": str(source.resolve()), "n": len(items)}
    return _write(out, build, results, shard_bytes=shard_bytes, progress=progress, total=len(items))


# ---------------------------------------------------------------------------- Model Zoos
_MZ_VARIANTS = {"CNN": "cnn", "CNN3": "cnn3"}


def _read_json_lines(path: Path) -> list[dict]:
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ZooError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def import_modelzoos(source, out, *, limit: int | None = None,
                     shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = False) -> dict:
    source = Path(source)
    if not source.is_dir():
        raise ZooError(f"{source}: not a folder of Model Zoo trials")
    trials = sorted(p for p in source.iterdir() if p.is_dir() and (p / "params.json").exists())
    if not trials:
        raise ZooError(f"{source}: no trial folders (folders with params.json) found")
    trials = trials[: limit if limit is not None else None]

    def results(done: set) -> Iterator[JobResult]:
        for index, trial in enumerate(trials):
            if f"{index:06d}" in done:
                continue
            try:
                params = json.loads((trial / "params.json").read_text())
            except json.JSONDecodeError as e:
                raise ZooError(f"{trial / 'params.json'}: not valid JSON ({e.msg})") from None
            mtype = str(params.get("model::type", "CNN"))
            if mtype not in _MZ_VARIANTS:
                raise ZooError(f"{trial / 'params.json'}: model::type {mtype!r} is not supported "
                               f"(supported: {', '.join(_MZ_VARIANTS)})")
            kw = dict(in_channels=int(params.get("model::channels_in", 1)),
                      variant=_MZ_VARIANTS[mtype],
                      activation=str(params.get("model::nlin", "tanh")).replace("leakyrelu", "leaky_relu"),
                      dropout=float(params.get("model::dropout", 0.0) or 0.0))
            res_path = trial / "result.json"
            by_epoch = {}
            if res_path.exists():
                for r in _read_json_lines(res_path):
                    if "training_iteration" in r:
                        by_epoch[int(r["training_iteration"])] = r
            ckpts = []
            for d in trial.iterdir():
                m = re.fullmatch(r"checkpoint_(\d+)", d.name)
                if m and d.is_dir():
                    f = next((d / n for n in ("checkpoints.safetensors", "checkpoints")
                              if (d / n).exists()), None)
                    if f is None:
                        raise ZooError(f"{d}: no 'checkpoints' file")
                    ckpts.append((int(m.group(1)), f))
            if not ckpts:
                raise ZooError(f"{trial}: no checkpoint_<epoch>/checkpoints folders")
            ckpts.sort()
            steps, sds, metrics = [], [], []
            for epoch, f in ckpts:
                sd = _check_against_arch(load_checkpoint_file(f), "modelzoo_cnn", kw, f)
                r = by_epoch.get(epoch, {})
                m = {k: float(r[k]) for k in ("train_loss", "train_acc", "test_loss", "test_acc",
                                              "val_loss", "val_acc") if isinstance(r.get(k), (int, float))}
                steps.append(epoch)
                sds.append(sd)
                metrics.append(m)
            missing = [s for s, m in zip(steps, metrics)
                       if not {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(m)]
            hp = {k: v for k, v in params.items() if not k.startswith("model::")
                  and isinstance(v, (int, float, str, bool))}
            job = Job(index=index, recipe="import:modelzoos", arch="modelzoo_cnn", arch_kwargs=kw,
                      task="classify", dataset=str(params.get("dataset::dump", params.get("dataset", "unknown"))),
                      hparams=hp, seed=int(params.get("seed", 0) or 0), steps=steps,
                      meta={"trial": trial.name, "steps_without_metrics": missing})
            yield JobResult(job, steps, sds, metrics)

    build = {"source_format": "modelzoos", "source": str(source.resolve()), "n": len(trials)}
    return _write(out, build, results, shard_bytes=shard_bytes, progress=progress, total=len(trials))


# ----------------------------------------------------------------------------- INR sets
def _siren_from_state_dict(sd: dict, where, out_offset: float) -> tuple[dict, dict]:
    """(arch_kwargs, state dict with keys layers.{i}.weight/bias) for a SIREN state dict
    with DWSNets (``seq.i.weight``) or NFN (``net.i.linear.weight``) keys."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = re.fullmatch(r"(?:seq|net|layers)\.(\d+)\.(?:linear\.)?(weight|bias)", k)
        if not m:
            raise ZooError(f"{where}: key {k!r} is not a SIREN layer weight/bias "
                           f"(expected seq.i.weight, net.i.linear.weight or net.i.weight)")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
    order = sorted(layers)
    if len(order) < 2 or any(set(layers[i]) != {"weight", "bias"} for i in order):
        raise ZooError(f"{where}: expected >= 2 linear layers each with weight and bias")
    ws = [layers[i]["weight"] for i in order]
    for a, b in zip(ws[:-1], ws[1:]):
        if a.shape[0] != b.shape[1]:
            raise ZooError(f"{where}: layer widths do not chain ({tuple(a.shape)} -> {tuple(b.shape)})")
    hidden = {int(w.shape[0]) for w in ws[:-1]}
    if len(hidden) != 1:
        raise ZooError(f"{where}: hidden layers of different widths {sorted(hidden)}")
    kw = dict(in_features=int(ws[0].shape[1]), out_features=int(ws[-1].shape[0]),
              hidden=hidden.pop(), n_layers=len(ws), w0=30.0, out_offset=out_offset)
    new = {}
    for j, i in enumerate(order):
        new[f"layers.{j}.weight"] = layers[i]["weight"]
        new[f"layers.{j}.bias"] = layers[i]["bias"]
    return kw, new


def _import_inrs(fmt: str, source: Path, out, files: list[tuple[Path, int, str, str]],
                 out_offset: float, shard_bytes: int, progress: bool) -> dict:
    """files: (path, label, split, class_name)."""

    def results(done: set) -> Iterator[JobResult]:
        for index, (path, label, split, cls) in enumerate(files):
            if f"{index:06d}" in done:
                continue
            kw, sd = _siren_from_state_dict(load_checkpoint_file(path), path, out_offset)
            sd = _check_against_arch(sd, "siren", kw, path)
            meta = {"label": label, "split": split, "class_name": cls,
                    "source_file": str(path.relative_to(source)), "no_metrics": True}
            job = Job(index=index, recipe=f"import:{fmt}", arch="siren", arch_kwargs=kw, task="inr",
                      dataset=fmt, hparams={}, seed=0, steps=[0], meta=meta)
            yield JobResult(job, [0], [sd], [{}])

    build = {"source_format": fmt, "source": str(source.resolve()), "n": len(files)}
    return _write(out, build, results, shard_bytes=shard_bytes, progress=progress, total=len(files))


def _ckpt_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".pth", ".pt", ".safetensors")
                  and p.is_file())


def import_dwsnets(source, out, *, limit: int | None = None,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = False) -> dict:
    source = Path(source)
    files = []
    for p in _ckpt_files(source):
        rel = p.relative_to(source).as_posix()
        try:
            label = int(p.parent.parent.name.split("_")[-2])
        except (IndexError, ValueError):
            raise ZooError(f"{p}: cannot read the label from the path: DWSNets INRs live in "
                           f"folders named like mnist_png_training_<label>_<n>/checkpoints/") from None
        files.append((p, label, "train" if "train" in rel else "test", str(label)))
    if not files:
        raise ZooError(f"{source}: no .pth INR files found")
    return _import_inrs("dwsnets", source, out, files[: limit if limit is not None else None],
                        0.5, shard_bytes, progress)


def import_nfn(source, out, *, limit: int | None = None,
               shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = False) -> dict:
    source = Path(source)
    classes = sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
    if not classes:
        raise ZooError(f"{source}: expected one folder per class holding .pth INR files")
    numeric = all(c.name.isdigit() for c in classes)
    files = []
    for ci, c in enumerate(classes):
        label = int(c.name) if numeric else ci
        for p in _ckpt_files(c):
            rel = p.relative_to(source).as_posix()
            split = "test" if "/test" in "/" + rel else "train"
            files.append((p, label, split, c.name))
    if not files:
        raise ZooError(f"{source}: no .pth INR files found in the class folders")
    return _import_inrs("nfn", source, out, files[: limit if limit is not None else None],
                        0.0, shard_bytes, progress)


FORMATS: dict[str, Callable[..., dict]] = {
    "smallcnnzoo": import_smallcnnzoo,
    "modelzoos": import_modelzoos,
    "dwsnets": import_dwsnets,
    "nfn": import_nfn,
}


def import_zoo(fmt: str, source, out, **kwargs) -> dict:
    """Import ``source`` (format ``fmt``, one of :data:`FORMATS`) into the zoo ``out``."""
    if fmt not in FORMATS:
        raise KeyError(f"unknown zoo format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt](source, out, **kwargs)
