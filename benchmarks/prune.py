"""Meta pruning against random and magnitude pruning on held-out digits CNNs.

    python benchmarks/prune.py            # 3 seeds; writes benchmarks/prune.md, benchmarks/results/prune.json
                                          # and benchmarks/results/prune_accuracy.png

Runs :func:`tasks.meta_prune.run` (each seed trains its own zoo, meta-trains a GMN on part
of it and evaluates on the held-out rest) with one CPU thread per process (the machine is
shared; more threads only contend).
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.meta_prune import MetaPruneConfig, MetaPruneResult, _save, run  # noqa: E402

CONFIG = MetaPruneConfig(n_train_nets=6, n_test_nets=3, net_steps=200, meta_steps=100, meta_batch=3,
                         finetune_steps=30, seeds=(0, 1, 2))


def main() -> int:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res: MetaPruneResult = run(CONFIG)
    minutes = (time.perf_counter() - t0) / 60
    results = ROOT / "benchmarks" / "results"
    _save(res, results / "prune_run")
    (results / "prune.json").write_text(json.dumps({"config": asdict(CONFIG), "rows": res.rows}, indent=1))
    png = results / "prune_accuracy.png"
    (results / "prune_run" / "accuracy.png").replace(png)
    n = len({(r["seed"], r["net"]) for r in res.rows})
    text = ["# Pruning: held-out accuracy against FLOP reduction", "",
            f"Command: `python benchmarks/prune.py` ({minutes:.0f} min on 1 CPU thread). Digits CNNs "
            f"(zoo.models.small_cnn, {CONFIG.channels} channels, 3 convolutions) trained here; per seed "
            f"{CONFIG.n_train_nets} networks meta-train the GMN and {CONFIG.n_test_nets} held-out networks "
            f"are pruned ({n} held-out networks over seeds {list(CONFIG.seeds)}). Each method prunes to "
            f"the FLOP-reduction target with metanet.prune (uniform ratio found by bisection), then "
            f"fine-tunes {CONFIG.finetune_steps} steps (Adam, lr 1e-3, batch {CONFIG.batch_size}).", "",
            "Mean held-out test accuracy (%):", "", res.table(), "",
            "![accuracy against FLOP reduction](results/prune_accuracy.png)", "",
            f"Config: `{json.dumps(asdict(CONFIG))}`", ""]
    (ROOT / "benchmarks" / "prune.md").write_text("\n".join(text))
    print("wrote benchmarks/prune.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
