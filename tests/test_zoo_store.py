"""Storage: packing, incremental packs, crash leftovers, and bad input (corrupted
shards, missing tensors, wrong shapes, non-finite values, broken manifests) caught by
the reader and by verify, with errors naming the file and the record."""
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.cli import main as cli
from zoo.store import ZooDir, ZooError

STEPS = [0, 1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "zoo"
    zoo.build("digits_mlp", 3, out, seed=0, options={"steps": STEPS}, progress=False)
    return out


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "zoo"
    shutil.copytree(built, dst)
    return dst


SHARD = "shards/shard-00000.safetensors"


def _rewrite_shard(root: Path, edit, fix_checksum=True):
    """Rewrite the shard through ``edit(tensors)``; optionally record its new checksum
    (so that only the edit, not the checksum, is what verify sees)."""
    import hashlib

    path = root / SHARD
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    if fix_checksum:
        info = json.loads((root / "zoo.json").read_text())
        blob = path.read_bytes()
        info["shards"][SHARD] = {**info["shards"][SHARD], "bytes": len(blob),
                                 "sha256": hashlib.sha256(blob).hexdigest()}
        (root / "zoo.json").write_text(json.dumps(info))


def test_clean_zoo_verifies(built):
    rep = zoo.verify(built)
    assert rep.ok, rep.summary()
    assert rep.records == 3 * len(STEPS) and rep.networks == 3 and rep.tensors == 6 * 6
    assert cli(["verify", str(built), "--quiet"]) == 0
    assert "OK" in rep.summary()


def test_corrupted_shard_bytes_are_caught_by_checksum(copy, capsys):
    path = copy / SHARD
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF  # flip bits inside tensor data: the file still parses
    path.write_bytes(bytes(blob))
    rep = zoo.verify(copy)
    assert not rep.ok
    assert any(str(path) in p and "sha256" in p for p in rep.problems)
    assert cli(["verify", str(copy), "--quiet"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_truncated_or_garbled_shard_names_file_and_record(copy):
    path = copy / SHARD
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rep = zoo.verify(copy, checksums=False)
    assert any(str(path) in p and "unreadable" in p and "000000/0" in p for p in rep.problems)
    z = zoo.Zoo.open(copy)
    with pytest.raises(ZooError) as e:
        z[0]
    assert str(path) in str(e.value) and "000000/0" in str(e.value)
    path.write_bytes(struct.pack("<Q", 10 ** 12) + data[8:])  # header length past the end
    with pytest.raises(ZooError, match="unreadable safetensors shard"):
        zoo.Zoo.open(copy)[0]


def test_missing_shard(copy):
    (copy / SHARD).unlink()
    rep = zoo.verify(copy)
    assert any("shard missing" in p and "000000/0" in p for p in rep.problems)
    with pytest.raises(ZooError, match="shard missing.*needed by record 000000/0"):
        zoo.Zoo.open(copy)[0]


def test_record_with_a_missing_tensor(copy):
    _rewrite_shard(copy, lambda t: t.pop("000001/1/layers.1.bias"))
    rep = zoo.verify(copy)
    assert len(rep.problems) == 1, rep.problems
    assert "record 000001/1" in rep.problems[0] and "'000001/1/layers.1.bias' missing" in rep.problems[0]
    assert str(copy / SHARD) in rep.problems[0]
    z = zoo.Zoo.open(copy)
    i = [r["id"] for r in z.records].index("000001/1")
    z[i - 1]  # its neighbours still read
    with pytest.raises(ZooError, match=r"record 000001/1: tensor '000001/1/layers.1.bias' missing from .*shard-00000"):
        z[i]


def test_checkpoint_not_matching_its_architecture(copy):
    def edit(t):
        t["000002/0/layers.0.weight"] = torch.zeros(5, 5)
    _rewrite_shard(copy, edit)
    rep = zoo.verify(copy)
    assert any("record 000002/0" in p and "has shape (5, 5)" in p and "expects (32, 64)" in p
               for p in rep.problems), rep.problems
    z = zoo.Zoo.open(copy)
    i = [r["id"] for r in z.records].index("000002/0")
    with pytest.raises(ZooError, match=r"record 000002/0 .*'layers.0.weight' has shape \(5, 5\)"):
        z[i]
    # a tensor the architecture does not have is reported too
    _rewrite_shard(copy, lambda t: t.__setitem__("000000/1/layers.0.weightX", torch.zeros(2)))
    assert any("not parameters of architecture mlp" in p for p in zoo.verify(copy).problems)
    # ... and breaks the back-to-back layout stacked() relies on: it falls back to reading
    # tensor by tensor and still returns the right values
    ok = zoo.Zoo.open(copy).where(step=1)
    st = ok.stacked()
    for j in range(len(ok)):
        assert all(torch.equal(st[k][j], ok[j][k]) for k in st)


def test_non_finite_values_and_missing_metrics(copy):
    def edit(t):
        t["000000/1/layers.2.weight"][0, 0] = float("nan")
    _rewrite_shard(copy, edit)
    lines = (copy / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[3])
    del rec["metrics"]["test_acc"]
    lines[3] = json.dumps(rec)
    (copy / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    problems = zoo.verify(copy).problems
    assert any("record 000000/1" in p and "non-finite" in p for p in problems)
    assert any(f"record {rec['id']}" in p and "metric 'test_acc' missing" in p for p in problems)


def test_broken_manifest_line_is_named(copy):
    with open(copy / "manifest.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ZooError, match=r"manifest.jsonl:7: not valid JSON"):
        zoo.Zoo.open(copy)
    assert any("manifest.jsonl:7" in p for p in zoo.verify(copy).problems)


def test_not_a_zoo_and_unpacked_zoo(tmp_path):
    with pytest.raises(ZooError, match="zoo.json: missing"):
        zoo.Zoo.open(tmp_path)
    assert not zoo.verify(tmp_path).ok
    out = tmp_path / "unpacked"
    zoo.build("digits_mlp", 2, out, seed=0, options={"steps": [0]}, do_pack=False, progress=False)
    with pytest.raises(ZooError, match="not packed yet .*2 finished networks"):
        zoo.Zoo.open(out)
    assert cli(["pack", str(out), "--quiet"]) == 0
    assert len(zoo.Zoo.open(out)) == 2


def test_extending_a_zoo_packs_incrementally(copy, tmp_path):
    before = (copy / SHARD).read_bytes()
    zoo.build("digits_mlp", 4, copy, seed=0, options={"steps": STEPS}, progress=False)
    assert (copy / SHARD).read_bytes() == before  # old shard untouched
    assert (copy / "shards" / "shard-00001.safetensors").exists()
    z = zoo.Zoo.open(copy)
    assert len(z.jobs()) == 4 and zoo.verify(copy).ok
    fresh = tmp_path / "fresh"
    zoo.build("digits_mlp", 4, fresh, seed=0, options={"steps": STEPS}, progress=False)
    f = zoo.Zoo.open(fresh)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("shard",)}
    assert [strip(r) for r in z.records] == [strip(r) for r in f.records]
    for i in range(len(z)):
        assert all(torch.equal(z[i][k], f[i][k]) for k in z[i])


def test_pack_recovers_from_crash_leftovers(built, tmp_path):
    out = tmp_path / "crash"
    zoo.build("digits_mlp", 3, out, seed=0, options={"steps": STEPS}, do_pack=False, progress=False)
    saved = {p.name: p.read_bytes() for p in ZooDir(out).job_files()}
    # a shard written by a pack that crashed before its manifest: gets overwritten
    (out / "shards").mkdir()
    (out / SHARD).write_bytes(b"orphan from a crashed pack")
    zoo.pack(out)
    manifest = (out / "manifest.jsonl").read_text()
    # job files that a crashed pack had packed but not deleted: dropped, not duplicated
    for name, data in saved.items():
        (out / "jobs" / name).write_bytes(data)
    assert zoo.pack(out)["packed_jobs"] == 0
    assert (out / "manifest.jsonl").read_text() == manifest
    assert not ZooDir(out).job_files()
    assert zoo.verify(out).ok
    assert manifest == (built / "manifest.jsonl").read_text()
