"""Classify implicit neural representations (INRs) by their weights: an INR zoo (one
SIREN per image) -> metanetwork -> class accuracy on held-out images.

>>> from tasks.classify_inr import INRConfig, run
>>> result = run(INRConfig(zoo="zoos/digits_siren", model="gmn"))
>>> result.test["acc"]

or ``metanet train inr --zoo zoos/digits_siren --model gmn``.

The same loop as :mod:`tasks.predict_accuracy` (AdamW, cosine schedule, evaluation each
epoch, the best model by validation accuracy saved as safetensors + config, JSON-lines
metrics, PNG plots), with a cross-entropy loss, the split made by image (all fits of one
image land in one part) and a confusion matrix of the test split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .predict_accuracy import Result, fit

__all__ = ["INRConfig", "run"]


@dataclass(frozen=True)
class INRConfig:
    zoo: str
    model: str = "gmn"                # gmn | gmn_hybrid | ngt | nfn | statnn
    out: str = "out/inr"
    target: str = "label"             # the class field of each INR's record
    num_classes: int = 10
    steps: str = "last"               # "last" fit of every INR, or "all" checkpoints
    layout: str = "compact"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 32
    layers: int = 3
    seed: int = 0
    max_train: int | None = None
    preload: bool = True              # read a split of one or a few architectures into memory once
    progress: bool = True
    readout_norm: str | None = None   # GMN/NGT: "batch" standardises pooled features across networks
                                      # (without it plain GMN and NGT stay at chance on digits SIRENs)
    device: str = "cpu"               # cpu | cuda | cuda:N | auto (the GPU when there is one)


def _scores(logits, y) -> dict:
    return {"acc": float((logits.argmax(-1) == y).float().mean()),
            "loss": float(F.cross_entropy(logits, y))}


def _confusion(logits, y, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(max(logits.shape[-1], int(y.max()) + 1))
    m = torch.zeros(k, k, dtype=torch.long)
    m.index_put_((y, logits.argmax(-1)), torch.ones_like(y), accumulate=True)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(m.numpy(), cmap="Blues")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"test accuracy {float((logits.argmax(-1) == y).float().mean()):.3f}")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)


def run(config: INRConfig, transform=None) -> Result:
    """Train and test; ``transform``: a :mod:`metanet.augment` transform or MixUp of the
    zoo's weight space applied to every training batch (MixUp's soft class rows are
    valid cross-entropy targets)."""
    def ce(logits, y):
        return F.cross_entropy(logits, y)

    return fit(config, out_dim=config.num_classes, loss_fn=ce, scores_fn=_scores, key="acc",
               target_fn=lambda view: view.targets(config.target, dtype=torch.long),
               split_by="image", plot_fn=_confusion, transform=transform)
