"""`metanet train accuracy` under torchrun: two processes sharing every global batch
train the same metanetwork as one process with that batch.

Not bit-exact: each process sums the loss gradient of its own rows, and the two sums are
added by all_reduce, so the float additions happen in another order (and the GMN's
matrix products run on 4 rows instead of 8). The differences are float32 rounding,
about 1e-8 here; the tolerance is 1e-5, far below what a wrong share or a missing sum
changes (the control below)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from metanet.cli import main

pytestmark = pytest.mark.slow

# 17 training checkpoints in global batches of 8: 8, 8, 1. The last batch gives one row
# to rank 0 and none to rank 1, the case a plain average over processes gets wrong.
ARGS = ["--model", "gmn", "--epochs", "2", "--hidden", "8", "--layers", "1", "--max-train", "17", "--quiet"]


def _train(zoo, out, batch_size: int, processes: int = 1) -> tuple[list[dict], dict]:
    args = ["train", "accuracy", "--zoo", str(zoo), "--out", str(out), "--batch-size", str(batch_size), *ARGS]
    if processes == 1:
        assert main(args) == 0
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc-per-node", str(processes), "-m", "metanet.cli", *args],
                             env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.count('"best_epoch"') == 1, "only rank 0 reports"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, load_file(out / "best" / "model.safetensors")


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_match_one(cnn_zoo, tmp_path):
    rows2, params2 = _train(cnn_zoo, tmp_path / "two", 8, processes=2)
    rows1, params1 = _train(cnn_zoo, tmp_path / "one", 8)
    best = json.loads((tmp_path / "one" / "best" / "task.json").read_text())["epoch"]
    assert json.loads((tmp_path / "two" / "best" / "task.json").read_text())["epoch"] == best
    assert params1.keys() == params2.keys()
    for k in params1:
        torch.testing.assert_close(params2[k], params1[k], rtol=1e-5, atol=1e-6)
    assert len(rows1) == len(rows2) == 2
    for r1, r2 in zip(rows1, rows2):
        for k in ("train_loss", "val_mse", "val_tau"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-5), (r1["epoch"], k)

    # control: what one process's share alone would train on (global batch 4) ends far
    # from the batch-8 run, so unsummed gradients would fail the comparison above; ranks
    # that both read the whole batch would double the summed loss, failing train_loss
    rows4, params4 = _train(cnn_zoo, tmp_path / "half", 4)
    assert _max_difference(params4, params1) > 100 * max(1e-6, _max_difference(params2, params1))
    assert abs(rows4[0]["train_loss"] - rows1[0]["train_loss"]) > 1e-3 * rows1[0]["train_loss"]
