"""Check a whole zoo: ``verify(path)`` / ``metanet zoo verify DIR``.

Checks, reporting each problem with the file and the record it concerns:

* ``zoo.json`` and ``manifest.jsonl`` parse; record ids are unique;
* every shard named by a record exists, opens, and (unless ``checksums=False``) has
  the size and sha256 that ``zoo.json`` recorded at packing;
* every record's tensors exist, have the shapes of its architecture (rebuilt from
  ``arch`` + ``arch_kwargs``), and hold finite values;
* every record carries its task's metrics (classification: train/test loss and
  accuracy; INR: mse and psnr), as finite numbers -- except imported checkpoints whose
  source recorded none (``meta.no_metrics``, ``meta.steps_without_metrics``);
* finished but unpacked job files are reported as a warning (not a problem).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .store import ZooDir, ZooError, read_manifest
from .train import _arch_shapes

__all__ = ["verify", "VerifyReport", "REQUIRED_METRICS"]

REQUIRED_METRICS = {"classify": ("train_loss", "train_acc", "test_loss", "test_acc"),
                    "inr": ("mse", "psnr")}


@dataclass
class VerifyReport:
    root: str
    records: int = 0
    networks: int = 0
    shards: int = 0
    tensors: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_lines: int = 50) -> str:
        lines = [f"zoo {self.root}: {self.networks} networks, {self.records} checkpoints, "
                 f"{self.shards} shards, {self.tensors} tensors checked",
                 f"{len(self.problems)} problem(s), {len(self.warnings)} warning(s)"]
        for p in self.problems[:max_lines]:
            lines.append(f"PROBLEM {p}")
        if len(self.problems) > max_lines:
            lines.append(f"... and {len(self.problems) - max_lines} more problems")
        for w in self.warnings[:max_lines]:
            lines.append(f"warning {w}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path, checksums: bool = True, progress: bool = False) -> VerifyReport:
    from safetensors import safe_open

    zd = ZooDir(path)
    rep = VerifyReport(str(zd.root))
    try:
        info = zd.read_info()
    except ZooError as e:
        rep.problems.append(str(e))
        return rep
    if info is None:
        rep.problems.append(f"{zd.info_path}: missing (not a zoo folder)")
        return rep
    pending = zd.job_files()
    if pending:
        rep.warnings.append(f"{zd.jobs_dir}: {len(pending)} finished networks not packed yet "
                            f"(run `metanet zoo pack {zd.root}`)")
    if not zd.manifest_path.exists():
        rep.problems.append(f"{zd.manifest_path}: missing (zoo not packed)")
        return rep
    try:
        records = read_manifest(zd.manifest_path)
    except ZooError as e:
        rep.problems.append(str(e))
        return rep
    rep.records = len(records)
    rep.networks = len({r["job"] for r in records})
    seen = set()
    for r in records:
        if r["id"] in seen:
            rep.problems.append(f"{zd.manifest_path}: record id {r['id']!r} appears twice")
        seen.add(r["id"])

    by_shard: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_shard[r["shard"]].append(r)
    shard_table = info.get("shards") or {}
    rep.shards = len(by_shard)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(records), desc="verify", unit="ckpt")
    for shard, recs in sorted(by_shard.items()):
        spath = zd.root / shard
        ids = ", ".join(r["id"] for r in recs[:3]) + (" ..." if len(recs) > 3 else "")
        if not spath.exists():
            rep.problems.append(f"{spath}: shard missing (records {ids})")
            if bar:
                bar.update(len(recs))
            continue
        expect = shard_table.get(shard)
        if expect is None:
            rep.warnings.append(f"{spath}: not in zoo.json's shard table (no checksum to compare)")
        elif checksums:
            size = spath.stat().st_size
            if size != expect.get("bytes"):
                rep.problems.append(f"{spath}: {size} bytes, zoo.json recorded {expect.get('bytes')} "
                                    f"(corrupted or replaced shard; records {ids})")
            elif _sha256(spath) != expect.get("sha256"):
                rep.problems.append(f"{spath}: sha256 differs from zoo.json (corrupted shard; records {ids})")
        try:
            h = safe_open(str(spath), framework="pt")
            keys = set(h.keys())
        except Exception as e:
            rep.problems.append(f"{spath}: unreadable safetensors shard ({e}); records {ids}")
            if bar:
                bar.update(len(recs))
            continue
        for r in recs:
            _check_record(rep, r, spath, h, keys)
            if bar:
                bar.update(1)
        del h
    if bar:
        bar.close()
    return rep


def _check_record(rep: VerifyReport, r: dict, spath: Path, h, keys: set) -> None:
    where = f"{spath} record {r['id']}"
    task = r.get("task")
    metrics = r.get("metrics")
    meta = r.get("meta") or {}
    exempt = meta.get("no_metrics") or int(r["step"]) in (meta.get("steps_without_metrics") or [])
    if not isinstance(metrics, dict):
        rep.problems.append(f"{where}: no metrics")
    elif not exempt:
        for m in REQUIRED_METRICS.get(task, ()):
            v = metrics.get(m)
            if v is None:
                rep.problems.append(f"{where}: metric {m!r} missing")
            elif not isinstance(v, (int, float)) or not math.isfinite(v):
                rep.problems.append(f"{where}: metric {m!r} is {v!r}, not a finite number")
    try:
        expected = _arch_shapes(r["arch"], json.dumps(r["arch_kwargs"], sort_keys=True))
    except Exception as e:
        expected = None
        rep.warnings.append(f"{where}: architecture {r.get('arch')!r} {r.get('arch_kwargs')} "
                            f"cannot be built here ({e}); shapes not checked")
    prefix = r["prefix"]
    names = list(expected) if expected is not None else sorted(
        k[len(prefix):] for k in keys if k.startswith(prefix))
    if not names:
        rep.problems.append(f"{where}: no tensors under prefix {prefix!r}")
        return
    extra = sorted(k[len(prefix):] for k in keys if k.startswith(prefix)) if expected is not None else []
    unexpected = [k for k in extra if k not in expected] if expected is not None else []
    if unexpected:
        rep.problems.append(f"{where}: tensors {unexpected[:5]} are not parameters of "
                            f"architecture {r['arch']}")
    for name in names:
        key = prefix + name
        if key not in keys:
            rep.problems.append(f"{where}: tensor {key!r} missing")
            continue
        try:
            t = h.get_tensor(key)
        except Exception as e:
            rep.problems.append(f"{where}: tensor {key!r} unreadable ({e})")
            continue
        rep.tensors += 1
        if expected is not None and tuple(t.shape) != expected[name][0]:
            rep.problems.append(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, "
                                f"architecture {r['arch']} expects {expected[name][0]}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            rep.problems.append(f"{where}: tensor {name!r} holds non-finite values")
