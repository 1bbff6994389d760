"""On-disk layout of a zoo, atomic writes, packing and merging.

A zoo is a folder::

    DIR/zoo.json                       format, version, recipe + seed + options (or the
                                       import source), shard table (bytes, sha256, count)
    DIR/README.md                      zoo card: recipe, architectures, metric summary
    DIR/manifest.jsonl                 one JSON record per checkpoint, sorted by (index, step)
    DIR/shards/shard-00000.safetensors tensors "{job_id}/{step}/{param}" of many networks
    DIR/jobs/<job_id>.safetensors      a finished network not yet packed: tensors
                                       "{step}/{param}" + the job record in the header

How a build uses it: every finished network is written to ``jobs/`` as ONE file, first
to a temporary name in the same folder, then ``os.replace`` d into place, so a file there
is always complete and its presence is what marks the job done (a killed build loses
only the networks in flight).  ``pack`` moves finished jobs into shards: it writes the
new shards (atomically), then the manifest and ``zoo.json`` (atomically), then deletes
the packed job files; a crash at any point leaves a state the next ``pack`` completes.
Packing is deterministic: the same finished jobs give the same shards and manifest.

A manifest record::

    {"id": "000042/10", "job": "000042", "index": 42, "step": 10,
     "recipe": "digits_cnn", "arch": "small_cnn", "arch_kwargs": {...},
     "task": "classify", "dataset": "digits", "data_kwargs": {}, "hparams": {...},
     "seed": 1234, "steps": [0, 1, 5, 10], "meta": {...}, "diverged_at": null,
     "metrics": {"train_loss": ..., "train_acc": ..., "test_loss": ..., "test_acc": ...},
     "shard": "shards/shard-00000.safetensors", "prefix": "000042/10/"}

The tensors of a checkpoint are ``shard[prefix + name]`` for every parameter/buffer
name of the architecture.  Nothing here uses pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import torch

from .train import JOB_FIELDS, Job, JobResult, _key_order

__all__ = ["ZooError", "ZooDir", "atomic_write", "pack", "merge", "FORMAT", "VERSION",
           "read_manifest", "write_card"]

FORMAT = "metanet-zoo"
VERSION = 1
DEFAULT_SHARD_BYTES = 256 * 2 ** 20
JOB_KEY = "metanet_zoo_job"


class ZooError(Exception):
    """A zoo on disk is missing, malformed or inconsistent (the message names the
    file and, where there is one, the record)."""


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _json_line(obj) -> str:
    return json.dumps(obj, sort_keys=False, separators=(",", ":"), allow_nan=True)


def read_manifest(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ZooError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            for k in ("id", "job", "step", "shard", "prefix"):
                if k not in rec:
                    raise ZooError(f"{path}:{lineno}: record {rec.get('id', '?')!r} lacks field {k!r}")
            records.append(rec)
    return records


def _comparable(build: dict) -> dict:
    """A build description without what may differ between parts of one build."""
    d = json.loads(json.dumps(build))
    d.pop("n", None)
    (d.get("options") or {}).pop("data_root", None)
    return d


class ZooDir:
    """Paths and small operations on a zoo folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    info_path = property(lambda self: self.root / "zoo.json")
    manifest_path = property(lambda self: self.root / "manifest.jsonl")
    jobs_dir = property(lambda self: self.root / "jobs")
    shards_dir = property(lambda self: self.root / "shards")
    card_path = property(lambda self: self.root / "README.md")

    # ---- zoo.json
    def read_info(self) -> dict | None:
        if not self.info_path.exists():
            return None
        try:
            info = json.loads(self.info_path.read_text())
        except json.JSONDecodeError as e:
            raise ZooError(f"{self.info_path}: not valid JSON ({e.msg})") from None
        if info.get("format") != FORMAT:
            raise ZooError(f"{self.info_path}: not a metanet zoo (format={info.get('format')!r})")
        if int(info.get("version", 0)) > VERSION:
            raise ZooError(f"{self.info_path}: zoo format version {info['version']} is newer than "
                           f"this metanet understands ({VERSION}); upgrade metanet")
        return info

    def write_info(self, info: dict) -> None:
        atomic_write(self.info_path, json.dumps(info, indent=1, sort_keys=True) + "\n")

    def init(self, build: dict) -> dict:
        """Create ``zoo.json`` for a build, or check that an existing zoo was built with
        the same recipe, seed and options (``n`` may grow).  Returns the info."""
        info = self.read_info()
        if info is None:
            info = {"format": FORMAT, "version": VERSION, "build": build, "shards": {}}
            self.write_info(info)
            return info
        old, new = _comparable(info.get("build") or {}), _comparable(build)
        if old != new:
            raise ZooError(f"{self.info_path}: this folder holds a zoo built with {old}, not {new}; "
                           f"use another --out folder (or the same arguments to resume)")
        if int(build.get("n", 0)) > int(info["build"].get("n", 0)):
            info["build"]["n"] = int(build["n"])
            self.write_info(info)
        return info

    # ---- job files
    def job_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.safetensors"

    def job_files(self) -> list[Path]:
        if not self.jobs_dir.exists():
            return []
        return sorted(p for p in self.jobs_dir.glob("*.safetensors") if not p.name.startswith("."))

    def write_job(self, result: JobResult) -> Path:
        path = self.job_path(result.job.id)
        atomic_write(path, result.to_bytes())
        return path

    def write_job_bytes(self, job_id: str, data: bytes) -> Path:
        path = self.job_path(job_id)
        atomic_write(path, data)
        return path

    @staticmethod
    def read_job_record(path: Path) -> dict:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as h:
                meta = h.metadata() or {}
        except Exception as e:
            raise ZooError(f"{path}: unreadable job file ({e})") from None
        if JOB_KEY not in meta:
            raise ZooError(f"{path}: job file without a job record in its header")
        return json.loads(meta[JOB_KEY])

    @staticmethod
    def read_job(path: Path) -> JobResult:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as h:
                meta = h.metadata() or {}
                tensors = {k: h.get_tensor(k) for k in h.keys()}
        except Exception as e:
            raise ZooError(f"{path}: unreadable job file ({e})") from None
        if JOB_KEY not in meta:
            raise ZooError(f"{path}: job file without a job record in its header")
        record = json.loads(meta[JOB_KEY])
        try:
            return JobResult.from_parts(record, tensors, _key_order(record))
        except KeyError as e:
            raise ZooError(f"{path}: job record names tensor {e} that the file lacks") from None

    def manifest(self) -> list[dict]:
        return read_manifest(self.manifest_path) if self.manifest_path.exists() else []

    def done_job_ids(self) -> set[str]:
        """Jobs finished: packed in the manifest, or a complete job file."""
        done = {r["job"] for r in self.manifest()}
        for p in self.job_files():
            try:
                self.read_job_record(p)
            except ZooError:
                continue  # damaged (not by us: our writes are atomic) -> train again
            done.add(p.stem)
        return done


# ------------------------------------------------------------------------------- pack
def _records_for(result: JobResult, shard: str) -> list[dict]:
    job = result.job.to_dict()
    base = {"job": result.job.id, **{k: job[k] for k in JOB_FIELDS}}
    out = []
    for step, metrics in zip(result.steps, result.metrics):
        rec = {"id": f"{result.job.id}/{step}", **base, "step": step,
               "diverged_at": result.diverged_at, "metrics": metrics,
               "shard": shard, "prefix": f"{result.job.id}/{step}/"}
        out.append(rec)
    return out


def pack(root: str | os.PathLike, shard_bytes: int = DEFAULT_SHARD_BYTES,
         progress: bool = False) -> dict:
    """Move finished job files into safetensors shards + manifest; write the card.

    Returns a summary ``{"packed_jobs", "shards_written", "checkpoints"}``.
    """
    from safetensors.torch import save

    zd = ZooDir(root)
    info = zd.read_info()
    if info is None:
        raise ZooError(f"{zd.info_path}: missing; {zd.root} is not a zoo folder")
    records = zd.manifest()
    packed = {r["job"] for r in records}
    files = zd.job_files()
    stale = [p for p in files if p.stem in packed]  # packed before a crash, not yet deleted
    todo = sorted((p for p in files if p.stem not in packed), key=lambda p: int(p.stem))
    shards = dict(info.get("shards") or {})
    next_index = 1 + max((int(Path(s).stem.split("-")[-1]) for s in shards), default=-1)

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="pack", unit="net")
    new_records: list[dict] = []
    written = 0
    batch: list[JobResult] = []
    batch_bytes = 0

    def flush():
        nonlocal next_index, batch, batch_bytes, written
        if not batch:
            return
        name = f"shards/shard-{next_index:05d}.safetensors"
        tensors = {}
        for res in batch:
            for step, sd in zip(res.steps, res.state_dicts):
                for k, v in sd.items():
                    tensors[f"{res.job.id}/{step}/{k}"] = v
            new_records.extend(_records_for(res, name))
        # one metadata key: safetensors writes several in hash order, which would make
        # the bytes (and the recorded sha256) differ between identical packs
        blob = save(tensors, metadata={"metanet_zoo": json.dumps({"format": FORMAT, "version": VERSION})})
        atomic_write(zd.root / name, blob)
        shards[name] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                        "checkpoints": sum(len(r.steps) for r in batch)}
        next_index += 1
        written += 1
        batch, batch_bytes = [], 0

    for p in todo:
        res = zd.read_job(p)
        size = sum(v.numel() * v.element_size() for sd in res.state_dicts for v in sd.values())
        if batch and batch_bytes + size > shard_bytes:
            flush()
        batch.append(res)
        batch_bytes += size
        if bar:
            bar.update(1)
    flush()
    if bar:
        bar.close()

    if new_records or not zd.manifest_path.exists():
        all_records = sorted(records + new_records, key=lambda r: (int(r["index"]), int(r["step"])))
        atomic_write(zd.manifest_path, "".join(_json_line(r) + "\n" for r in all_records))
        info["shards"] = shards
        info["counts"] = {"networks": len({r["job"] for r in all_records}),
                          "checkpoints": len(all_records)}
        zd.write_info(info)
        write_card(zd.root, info, all_records)
    for p in todo + stale:
        p.unlink(missing_ok=True)
    return {"packed_jobs": len(todo), "shards_written": written, "checkpoints": len(new_records)}


# ------------------------------------------------------------------------------ merge
def merge(sources: Iterable[str | os.PathLike], out: str | os.PathLike,
          shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = False) -> dict:
    """Merge zoos built as separate shards of one build (e.g. torchrun ranks on
    machines without a shared folder, or ``--rank/--world-size`` runs) into ``out``.

    Sources must come from the same build (recipe, seed, options); their finished jobs,
    packed or not, are copied into ``out`` and packed.  A job present in two sources
    must be identical in both.
    """
    sources = [Path(s) for s in sources]
    out_dir = ZooDir(out)
    build = None
    for src in sources:
        info = ZooDir(src).read_info()
        if info is None:
            raise ZooError(f"{Path(src) / 'zoo.json'}: missing; {src} is not a zoo folder")
        b = dict(info["build"])
        if build is not None and _comparable(b) != _comparable(build):
            raise ZooError(f"{Path(src) / 'zoo.json'}: built with {_comparable(b)}, but "
                           f"{sources[0]} was built with {_comparable(build)}; only parts of one "
                           f"build can be merged")
        build = b if build is None else {**build, "n": max(int(build.get("n", 0)), int(b.get("n", 0)))}
    if build is None:
        raise ZooError("merge needs at least one source zoo")
    out_dir.init(build)
    have = out_dir.done_job_ids()
    for src in sources:
        sd = ZooDir(src)
        for res in _iter_packed_jobs(sd):
            _merge_one(out_dir, have, res.job.id, res.to_bytes(), src)
        for p in sd.job_files():
            if Path(p).resolve().parent == out_dir.jobs_dir.resolve():
                continue
            _merge_one(out_dir, have, p.stem, p.read_bytes(), p)
    return pack(out, shard_bytes=shard_bytes, progress=progress)


def _merge_one(out_dir: ZooDir, have: set, job_id: str, data: bytes, where) -> None:
    if job_id in have:
        existing = _existing_bytes(out_dir, job_id)
        if existing is not None and existing != data:
            raise ZooError(f"{where}: job {job_id} differs from the copy already in {out_dir.root}")
        return
    out_dir.write_job_bytes(job_id, data)
    have.add(job_id)


def _existing_bytes(zd: ZooDir, job_id: str) -> bytes | None:
    p = zd.job_path(job_id)
    if p.exists():
        return p.read_bytes()
    for res in _iter_packed_jobs(zd, only={job_id}):
        return res.to_bytes()
    return None


def _iter_packed_jobs(zd: ZooDir, only: set | None = None):
    """JobResults reconstructed from a packed zoo's manifest and shards."""
    from safetensors import safe_open

    by_job: dict[str, list[dict]] = defaultdict(list)
    for r in zd.manifest():
        if only is None or r["job"] in only:
            by_job[r["job"]].append(r)
    handles = {}
    try:
        for job_id in sorted(by_job, key=int):
            recs = sorted(by_job[job_id], key=lambda r: int(r["step"]))
            first = recs[0]
            job = Job.from_dict({k: first[k] for k in JOB_FIELDS})
            record = {"job": job.to_dict(), "steps": [r["step"] for r in recs],
                      "metrics": [r["metrics"] for r in recs], "diverged_at": first.get("diverged_at")}
            order = _key_order(record)
            sds = []
            for r in recs:
                shard = r["shard"]
                if shard not in handles:
                    handles[shard] = safe_open(str(zd.root / shard), framework="pt")
                h = handles[shard]
                keys = (order or {}).get(r["step"]) or sorted(
                    k[len(r["prefix"]):] for k in h.keys() if k.startswith(r["prefix"]))
                sds.append({k: h.get_tensor(r["prefix"] + k) for k in keys})
            yield JobResult(job, record["steps"], sds, record["metrics"], record["diverged_at"])
    finally:
        handles.clear()


# ------------------------------------------------------------------------------- card
def write_card(root: str | os.PathLike, info: dict, records: list[dict]) -> None:
    """Write README.md (a Hugging Face dataset card) describing the zoo."""
    from .models import arch_key

    build = info.get("build") or {}
    from .train import _arch_shapes

    archs: dict[tuple, dict] = {}
    for r in records:
        try:
            shapes = _arch_shapes(r["arch"], json.dumps(r["arch_kwargs"], sort_keys=True))
            n_params = sum(int(torch.Size(s).numel()) for s, _ in shapes.values())
        except Exception:
            n_params = None
        a = archs.setdefault((r["arch"], n_params), {"arch": r["arch"], "params": n_params,
                                                     "jobs": set(), "checkpoints": 0, "variants": set()})
        a["jobs"].add(r["job"])
        a["checkpoints"] += 1
        a["variants"].add(arch_key(r["arch"], r["arch_kwargs"]))
    steps = sorted({int(r["step"]) for r in records})
    last = {}
    for r in records:
        if r["job"] not in last or int(r["step"]) > int(last[r["job"]]["step"]):
            last[r["job"]] = r
    metric_names = sorted({m for r in last.values() for m in (r.get("metrics") or {})})
    lines = ["---", "tags:", "- metanet", "- model-zoo", "- weight-space", "---", ""]
    title = build.get("recipe") or build.get("source_format") or "zoo"
    lines += [f"# Model zoo: {title}", ""]
    if build.get("recipe"):
        from .recipes import _RECIPES

        doc = _RECIPES[build["recipe"]].doc if build["recipe"] in _RECIPES else ""
        lines += [f"Built with metanet's zoo builder: recipe `{build['recipe']}`, seed "
                  f"{build.get('seed')}, {build.get('n')} networks requested. {doc}", ""]
        lines += ["```", "metanet zoo build --recipe " + build["recipe"] + f" --n {build.get('n')} "
                  f"--seed {build.get('seed')} --options '"
                  + json.dumps(build.get("options", {}), sort_keys=True) + "' --out DIR", "```", ""]
    else:
        lines += [f"Imported from {build.get('source_format')} ({build.get('source')}).", ""]
    lines += [f"{len(last)} networks, {len(records)} checkpoints at steps {steps}.", "",
              "| architecture | parameters (incl. buffers) | kwarg variants | networks | checkpoints |",
              "|---|---|---|---|---|"]
    for a in sorted(archs.values(), key=lambda a: -len(a["jobs"]))[:50]:
        lines.append(f"| `{a['arch']}` | {a['params'] if a['params'] is not None else '?'} | "
                     f"{len(a['variants'])} | {len(a['jobs'])} | {a['checkpoints']} |")
    if len(archs) > 50:
        lines.append(f"| ... | {len(archs) - 50} more architectures | | | |")
    if metric_names:
        lines += ["", "Metrics at each network's last checkpoint:", "",
                  "| metric | mean | min | max |", "|---|---|---|---|"]
        for m in metric_names:
            vals = [float(r["metrics"][m]) for r in last.values()
                    if isinstance((r.get("metrics") or {}).get(m), (int, float))]
            if vals:
                lines.append(f"| {m} | {sum(vals) / len(vals):.4f} | {min(vals):.4f} | {max(vals):.4f} |")
    lines += ["", "## Layout", "",
              "`manifest.jsonl`: one JSON record per checkpoint (architecture + kwargs, "
              "hyperparameters, seed, step, metrics, shard file, tensor key prefix). "
              "`shards/*.safetensors`: the tensors, key `prefix + parameter name`. "
              "`zoo.json`: build parameters and shard checksums.", "",
              "## Loading", "", "```python", "import zoo",
              "z = zoo.Zoo.open(\"PATH_OR_hf://USER/REPO\")",
              "sd = z[0]                          # a state dict",
              "batch = z.where(step=z.steps[-1]).stacked()  # dict of stacked tensors", "```", ""]
    atomic_write(Path(root) / "README.md", "\n".join(lines))
