"""The training loop's batch-transform hook: every training batch goes through it, no
validation or test batch does, and MixUp's mixed labels reach the loss."""
import pytest
import torch

from metanet.augment import MixUp, RandomSignFlip
from tasks.classify_inr import INRConfig
from tasks.classify_inr import run as run_inr
from tasks.predict_accuracy import apply_transform, zoo_batches
from zoo import Zoo


class Recorder:
    """A sign-flip augmentation that counts the networks it maps."""

    def __init__(self, ws):
        self.flip, self.seen = RandomSignFlip(ws, seed=0), 0

    def __call__(self, stack):
        self.seen += len(next(iter(stack.values())))
        return self.flip(stack)


@pytest.mark.parametrize("preload", [True, False])
def test_every_training_batch_and_nothing_else_is_transformed(inr_zoo, tmp_path, preload):
    z = Zoo.open(inr_zoo)
    rec = Recorder(z.weight_space(0))
    cfg = INRConfig(zoo=str(inr_zoo), model="statnn", out=str(tmp_path / "o"), epochs=2, batch_size=4,
                    hidden=8, layers=1, progress=False, preload=preload)
    run_inr(cfg, transform=rec)
    train, _, _ = z.where(step="last").split(list(cfg.split), seed=cfg.split_seed, by="image")
    assert rec.seen == 2 * len(train)


def test_mixup_mixes_the_targets_and_a_plain_transform_keeps_them(inr_zoo):
    z = Zoo.open(inr_zoo)
    ws = z.weight_space(0)
    stack, y = z.stacked(range(8)), z.targets("label", dtype=torch.long)[:8]
    s2, y2 = apply_transform(MixUp(ws, alpha=0.4, num_classes=10, seed=0), stack, y)
    assert y2.shape == (8, 10) and torch.allclose(y2.sum(1), torch.ones(8))
    assert not torch.equal(y2, torch.nn.functional.one_hot(y, 10).float())
    s3, y3 = apply_transform(RandomSignFlip(ws, seed=1), stack, y)
    assert torch.equal(y3, y) and any(not torch.equal(s3[k], stack[k]) for k in stack)
    # the streamed reader applies it too
    (g, yb), = list(zoo_batches(z.subset(list(range(8))), 8,
                                target_fn=lambda v: v.targets("label", dtype=torch.long),
                                transform=MixUp(ws, alpha=0.4, num_classes=10, seed=0)))
    assert yb.shape == (8, 10)


def test_classify_inr_trains_with_mixup(inr_zoo, tmp_path):
    ws = Zoo.open(inr_zoo).weight_space(0)
    result = run_inr(INRConfig(zoo=str(inr_zoo), model="gmn", out=str(tmp_path / "m"), epochs=1, batch_size=8,
                               hidden=8, layers=1, progress=False),
                     transform=MixUp(ws, alpha=0.4, num_classes=10, seed=0))
    assert 0.0 <= result.test["acc"] <= 1.0 and torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
