"""Hub code paths, without network.

What is exercised for real: ``Zoo.open("hf://user/repo")`` and ``pull`` going through
huggingface_hub's ``hf_hub_download`` / ``snapshot_download`` with ``HF_HUB_OFFLINE=1``
against a Hub cache laid out by hand (``datasets--user--repo/refs/main`` +
``snapshots/<commit>/...``), exactly what a previous download leaves behind.  What is
NOT exercised: talking to the Hub.  ``push`` is tested with a stand-in for ``HfApi``
that records the calls (repo type, folder, file patterns), not with a real upload.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.hub import ZOO_FILES, parse_hub_path

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "zoo"
    zoo.build("digits_mlp", 2, out, seed=0, options={"steps": [0, 1]}, progress=False)
    return out


def _fake_cache(cache: Path, zoo_dir: Path, repo="user/tiny", with_shards=True) -> Path:
    storage = cache / ("datasets--" + repo.replace("/", "--"))
    snap = storage / "snapshots" / COMMIT
    for name in ("zoo.json", "README.md", "manifest.jsonl"):
        snap.mkdir(parents=True, exist_ok=True)
        shutil.copy(zoo_dir / name, snap / name)
    if with_shards:
        shutil.copytree(zoo_dir / "shards", snap / "shards")
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return snap


def _run_offline(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf_home"),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_open_and_pull_from_hub_cache_offline(built, tmp_path):
    cache = tmp_path / "cache"
    snap = _fake_cache(cache, built)
    code = f"""
import json, torch, zoo
z = zoo.Zoo.open("hf://user/tiny")
local = zoo.Zoo.open({str(built)!r})
assert [r["id"] for r in z.records] == [r["id"] for r in local.records]
a, b = z.stacked(), local.stacked()
assert all(torch.equal(a[k], b[k]) for k in a)
p = zoo.pull("user/tiny")
print(json.dumps({{"pulled": str(p), "n": len(z)}}))
"""
    r = _run_offline(code, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(out["pulled"]) == snap and out["n"] == 4


def test_hub_shards_are_fetched_lazily(built, tmp_path):
    cache = tmp_path / "cache"
    _fake_cache(cache, built, with_shards=False)  # only the small files are cached
    code = """
import zoo
z = zoo.Zoo.open("hf://user/tiny")
print(len(z), z.steps)
try:
    z[0]
except zoo.ZooError as e:
    print("ERR", e)
"""
    r = _run_offline(code, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "4 [0, 1]"  # opening needed no shard
    assert lines[1].startswith("ERR hf://user/tiny: cannot get shard shards/shard-00000.safetensors "
                               "(needed by record 000000/0)")


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))

        class C:
            commit_url = "https://huggingface.co/datasets/user/tiny/commit/abc"
        return C()


def test_push_uploads_the_packed_files_as_a_dataset(built, tmp_path):
    api = FakeApi()
    url = zoo.push(built, "user/tiny", api=api)
    assert url.endswith("/commit/abc")
    (_, repo, kw1), (_, kw2) = api.calls
    assert repo == "user/tiny" and kw1["repo_type"] == "dataset" and kw1["exist_ok"]
    assert kw2["folder_path"] == str(built) and kw2["repo_type"] == "dataset"
    assert kw2["allow_patterns"] == ZOO_FILES and "4 checkpoints" in kw2["commit_message"]
    # unpacked work is refused
    out = tmp_path / "unpacked"
    zoo.build("digits_mlp", 1, out, seed=0, options={"steps": [0]}, do_pack=False, progress=False)
    with pytest.raises(zoo.ZooError, match="pack"):
        zoo.push(out, "user/x", api=FakeApi())


def test_parse_hub_path():
    assert parse_hub_path("hf://user/repo") == ("user/repo", None)
    assert parse_hub_path("hf://datasets/user/repo@v1") == ("user/repo", "v1")
    assert parse_hub_path("/local/path") is None
    with pytest.raises(ValueError, match="hf://USER/REPO"):
        parse_hub_path("hf://justone")
