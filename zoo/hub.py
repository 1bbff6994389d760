"""Zoos on the Hugging Face Hub (dataset repositories).

* :func:`push` uploads a packed zoo folder (``zoo.json``, ``README.md``,
  ``manifest.jsonl``, ``shards/*.safetensors``) with ``HfApi.upload_folder``.
* :func:`pull` downloads one with ``snapshot_download`` (into the Hub cache, or into
  ``local_dir``).
* ``zoo.Zoo.open("hf://user/repo")`` (optionally ``hf://user/repo@revision``) fetches
  the small files first and each shard only when a checkpoint in it is read
  (``hf_hub_download``), so opening a large zoo to read a few networks downloads only
  their shards.

Offline (``HF_HUB_OFFLINE=1``) all of these resolve from the local Hub cache.
"""
from __future__ import annotations

import os
from pathlib import Path

from .store import ZooDir, ZooError

__all__ = ["push", "pull", "parse_hub_path", "hub_file", "ZOO_FILES"]

HF_PREFIX = "hf://"
ZOO_FILES = ["zoo.json", "README.md", "manifest.jsonl", "shards/*.safetensors"]


def parse_hub_path(path: str | os.PathLike) -> tuple[str, str | None] | None:
    """``"hf://user/repo@rev"`` -> ``("user/repo", "rev")``; anything else -> None.

    ``hf://datasets/user/repo`` (the huggingface_hub file-system spelling) is accepted.
    """
    s = str(path)
    if not s.startswith(HF_PREFIX):
        return None
    s = s[len(HF_PREFIX):]
    if s.startswith("datasets/"):
        s = s[len("datasets/"):]
    repo, _, rev = s.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"bad Hub zoo path {path!r}: expected hf://USER/REPO[@REVISION]")
    return repo, (rev or None)


def hub_file(repo_id: str, filename: str, revision: str | None = None,
             cache_dir: str | os.PathLike | None = None, token: str | None = None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision,
                                cache_dir=cache_dir, token=token))


def push(zoo_dir: str | os.PathLike, repo_id: str, *, token: str | None = None,
         private: bool | None = None, revision: str | None = None,
         commit_message: str | None = None, api=None) -> str:
    """Upload a packed zoo to the dataset repository ``repo_id``; returns the commit URL.

    ``api`` defaults to ``huggingface_hub.HfApi(token=token)``.
    """
    zd = ZooDir(zoo_dir)
    info = zd.read_info()
    if info is None:
        raise ZooError(f"{zd.info_path}: missing; {zd.root} is not a zoo folder")
    if not zd.manifest_path.exists():
        raise ZooError(f"{zd.manifest_path}: missing; pack the zoo first (metanet zoo pack {zd.root})")
    pending = zd.job_files()
    if pending:
        raise ZooError(f"{zd.jobs_dir}: {len(pending)} finished networks are not packed yet; "
                       f"run `metanet zoo pack {zd.root}` before pushing")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    n = (info.get("counts") or {}).get("checkpoints", "?")
    commit = api.upload_folder(folder_path=str(zd.root), repo_id=repo_id, repo_type="dataset",
                               revision=revision, allow_patterns=ZOO_FILES,
                               commit_message=commit_message or f"Upload metanet zoo ({n} checkpoints)")
    return str(getattr(commit, "commit_url", commit))


def pull(repo_id: str, local_dir: str | os.PathLike | None = None, *,
         revision: str | None = None, cache_dir: str | os.PathLike | None = None,
         token: str | None = None) -> Path:
    """Download a zoo repository; returns the folder holding it."""
    from huggingface_hub import snapshot_download

    if repo_id.startswith(HF_PREFIX):
        repo_id, rev = parse_hub_path(repo_id)
        revision = revision or rev
    path = snapshot_download(repo_id, repo_type="dataset", revision=revision,
                             local_dir=local_dir, cache_dir=cache_dir, token=token,
                             allow_patterns=ZOO_FILES)
    return Path(path)
