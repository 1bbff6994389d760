"""tasks.meta_prune: the options taken from the published meta pruning (issue 18, third round).

What is checked: the polarizing penalty has the value and the gradient of DepGraph's growing
regularizer (gamma * w on a neuron's slices, alpha times stronger on a group's smallest neuron
than on its largest); "global_max" allocation masks the lowest max-normalised norms over all
groups; the metanetwork applied twice is the composition of two passes, differs from one pass
and stays equivariant; bad option values are refused; in a tiny run, fine-tuning before
pruning and choosing a snapshot on validation networks change meta's results and leave the
baselines' alone.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from metanet.prune import group_norms
from metanet.space import WeightSpace

warnings.filterwarnings("ignore", category=UserWarning)


def _digits_cnn(seed=0):
    from zoo.models import small_cnn
    torch.manual_seed(seed)
    return small_cnn(channels=6, padding=1, input_size=8).eval(), (torch.randn(2, 1, 8, 8),)


def _editing_metanetwork():
    """A digits CNN, its weight space and a metanetwork whose edge head edits it (random
    weights instead of the identity start's zeros)."""
    from tasks.meta_prune import MetaPruner

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    meta = MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=2).start_at_identity()
    with torch.no_grad():
        for p in meta.gmn.edge_head.parameters():
            p.normal_(0, 0.3)
    return model, inputs, ws, meta


def _stacked(model, grad_names=()):
    return {k: v.unsqueeze(0).clone().requires_grad_(k in grad_names) for k, v in model.state_dict().items()}


def test_polarizing_penalty_value_and_gradient():
    from tasks.meta_prune import group_lasso, polarizing_penalty

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    params = {n for n, _ in model.named_parameters()}
    sd = _stacked(model, params)
    alpha = 16.0
    norms = group_norms(ws, model.state_dict(), 2, params)
    gammas = {g: alpha ** ((n.max() - n) / (n.max() - n.min())) for g, n in norms.items()}
    want = sum(0.5 * (gammas[g] * n ** 2).sum() for g, n in norms.items())
    got = polarizing_penalty(ws, sd, params, alpha)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # gradient: gamma_i * b_i on a bias, which only its own (output) group carries
    (grad,) = torch.autograd.grad(got, [sd[k] for k in sorted(params) if k.endswith("bias")][:1])
    bias_name = sorted(k for k in params if k.endswith("bias"))[0]
    gid = next(g for g in ws.groups if any(n == bias_name for n, _ in ws.group_axes(g.id))).id
    torch.testing.assert_close(grad[0].double(), gammas[gid] * sd[bias_name][0].detach().double(),
                               rtol=1e-4, atol=1e-7)
    assert float(gammas[gid].max() / gammas[gid].min()) == pytest.approx(alpha)
    # not the group lasso, and alpha 1 is a plain (group-summed) weight decay
    assert not torch.allclose(got, group_lasso(ws, sd, params))
    plain = sum(0.5 * (n ** 2).sum() for n in norms.values())
    torch.testing.assert_close(polarizing_penalty(ws, sd, params, 1.0).double(), plain, rtol=1e-5, atol=1e-6)
    two = {k: torch.cat([v.detach(), 2 * v.detach()]) for k, v in sd.items()}
    per = polarizing_penalty(ws, two, params, alpha, per_network=True)
    torch.testing.assert_close(per[1], 4 * per[0])


def test_global_max_mask_removes_the_lowest_relative_norms_over_all_groups():
    from tasks.meta_prune import masked

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    params = {n for n, _ in model.named_parameters()}
    sd = _stacked(model)
    norms = group_norms(ws, model.state_dict(), 2, params)
    rel = {g: n / n.max() for g, n in norms.items()}
    flat = torch.cat(list(rel.values()))
    ratio = 0.4
    thr = flat.sort().values[int(round(flat.numel() * ratio)) - 1]
    out = {k: v[0] for k, v in masked(ws, sd, params, ratio, allocation="global_max").items()}
    after = group_norms(ws, out, 2, params)
    for g, r in rel.items():
        gone = after[g] == 0
        assert torch.equal(gone, r <= thr) or (bool((r <= thr).all()) and int(gone.sum()) == len(r) - 1)
    # it differs from the global mask on raw norms (layers of other scales), which differs from uniform
    raw = {k: v[0] for k, v in masked(ws, sd, params, ratio, allocation="global").items()}
    raw_after = group_norms(ws, raw, 2, params)
    assert any(not torch.equal(after[g] == 0, raw_after[g] == 0) for g in after)


def test_metanetwork_applied_twice_is_two_passes_and_equivariant():
    from tasks.meta_prune import edit

    model, inputs, ws, meta = _editing_metanetwork()
    once, twice = edit(meta, model), edit(meta, model, times=2)
    again = edit(meta, once)
    for k in model.state_dict():
        torch.testing.assert_close(twice.state_dict()[k], again.state_dict()[k])
    assert any((twice.state_dict()[k] - once.state_dict()[k]).abs().max() > 1e-4 for k in model.state_dict())
    perm = ws.sample_permutation(torch.Generator().manual_seed(3))
    permuted = ws.permute(model.state_dict(), perm)
    twin, _ = _digits_cnn(1)
    twin.load_state_dict(permuted)
    got = edit(meta, twin, times=2).state_dict()
    want = ws.permute(twice.state_dict(), perm)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least 1"):
        edit(meta, model, times=0)


def test_bad_option_values_are_refused():
    from tasks.meta_prune import MetaPruneConfig, run

    tiny = dict(channels=6, n_train_nets=1, n_test_nets=1, net_steps=1, meta_steps=1, meta_batch=1,
                speedups=(2.0,), finetune_steps=2, progress=False)
    with pytest.raises(ValueError, match="pre_finetune is a part of finetune_steps"):
        run(MetaPruneConfig(pre_finetune=3, **tiny), log=lambda m: None)
    with pytest.raises(ValueError, match="apply_times is at least 1"):
        run(MetaPruneConfig(apply_times=0, **tiny), log=lambda m: None)
    with pytest.raises(ValueError, match="sparsity is 'lasso' or 'polarize'"):
        run(MetaPruneConfig(sparsity="l1", **tiny), log=lambda m: None)


@pytest.mark.slow
def test_fine_tune_first_and_validation_choice_change_meta_only():
    from tasks.meta_prune import MetaPruneConfig, run

    base = dict(channels=6, n_train_nets=2, n_test_nets=1, net_steps=30, meta_steps=4, meta_batch=2,
                speedups=(2.0,), finetune_steps=4, progress=False, methods=("magnitude", "meta"),
                open_gate=True, sparsity="polarize", lam=0.1)

    def acc(res, method, key="accuracy"):
        return [r[key] for r in res.rows if r["method"] == method]

    plain = run(MetaPruneConfig(**base), log=lambda m: None)
    first = run(MetaPruneConfig(pre_finetune=2, **base), log=lambda m: None)
    assert acc(first, "magnitude") == acc(plain, "magnitude")
    # pruned after 2 steps of fine-tuning: another network is pruned
    assert acc(first, "meta", "accuracy_before_finetune") != acc(plain, "meta", "accuracy_before_finetune")
    chosen = run(MetaPruneConfig(select_every=2, n_val_nets=1, **base), log=lambda m: None)
    (sel,) = chosen.selection
    assert sel["steps"] == [2, 4] and sel["chosen"] in sel["steps"] and len(sel["val_accuracy"]) == 2
    assert sel["val_accuracy"][sel["steps"].index(sel["chosen"])] == max(sel["val_accuracy"])
    assert acc(chosen, "magnitude") == acc(plain, "magnitude")       # held-out networks unchanged


def test_edit_strength_interpolates_and_stays_equivariant():
    from tasks.meta_prune import edit, with_strength

    model, inputs, ws, meta = _editing_metanetwork()
    edited = edit(meta, model)
    old, new = model.state_dict(), edited.state_dict()
    zero, one = with_strength(model, edited, 0.0).state_dict(), with_strength(model, edited, 1.0).state_dict()
    for k in old:
        assert torch.equal(zero[k], old[k]) and torch.equal(one[k], new[k])
    two = with_strength(model, edited, 2.0).state_dict()
    half = with_strength(model, edited, 0.5).state_dict()
    for k in old:
        if old[k].is_floating_point():
            torch.testing.assert_close(two[k], 2 * new[k] - old[k])
            torch.testing.assert_close(half[k], (old[k] + new[k]) / 2)
    assert any(not torch.allclose(two[k], new[k]) for k in old if old[k].is_floating_point())
    # the same strength on a permuted network gives the permuted result
    perm = ws.sample_permutation(torch.Generator().manual_seed(5))
    twin, _ = _digits_cnn(1)
    twin.load_state_dict(ws.permute(old, perm))
    got = with_strength(twin, edit(meta, twin), 2.0).state_dict()
    want = ws.permute(two, perm)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="finite"):
        with_strength(model, edited, float("nan"))


_TINY_STRENGTH = dict(channels=6, n_train_nets=2, n_test_nets=1, net_steps=5, meta_steps=2, meta_batch=2,
                      speedups=(2.0,), finetune_steps=3, progress=False, open_gate=True, lam=0.1, n_val_nets=1,
                      methods=("magnitude", "meta", "meta (strength chosen)"))


def test_strength_zero_is_magnitude_and_the_choice_is_the_best_on_validation():
    from tasks.meta_prune import MetaPruneConfig, run

    def rows(res, method):
        return [(r["speedup"], r["flops_reduction"], r["kept"], r["accuracy"]) for r in res.rows
                if r["method"] == method]

    res = run(MetaPruneConfig(strength_grid=(0.0,), **_TINY_STRENGTH), log=lambda m: None)
    assert rows(res, "meta (strength chosen)") == rows(res, "magnitude")
    assert rows(res, "meta") != rows(res, "magnitude")        # the edit at s = 1 prunes something else
    res = run(MetaPruneConfig(strength_grid=(0.0, 4.0), **_TINY_STRENGTH), log=lambda m: None)
    (st,) = res.strength
    assert st["grid"] == [0.0, 4.0] and len(st["val_accuracy"]) == 2 and st["speedup"] == 2.0
    best = max(st["val_accuracy"])
    assert st["chosen"] == st["grid"][st["val_accuracy"].index(best)]      # ties: the first in the grid
    if st["chosen"] == 0.0:
        assert rows(res, "meta (strength chosen)") == rows(res, "magnitude")
    with pytest.raises(ValueError, match="needs a strength_grid"):
        run(MetaPruneConfig(**_TINY_STRENGTH), log=lambda m: None)
    with pytest.raises(ValueError, match="needs validation networks"):
        run(MetaPruneConfig(strength_grid=(1.0,), **{**_TINY_STRENGTH, "n_val_nets": 0}), log=lambda m: None)


def test_a_zoo_reused_in_process_gives_the_same_run():
    import tasks.meta_prune as mp

    cfg = mp.MetaPruneConfig(**{**_TINY_STRENGTH, "methods": ("magnitude", "meta")})
    mp._ZOO_CACHE.clear()
    fresh = mp.run(cfg, log=lambda m: None)
    assert len(mp._ZOO_CACHE) == 1
    cached = mp.run(cfg, log=lambda m: None)

    def strip(res):
        return [{k: v for k, v in r.items() if k != "latency_speedup"} for r in res.rows]

    assert strip(fresh) == strip(cached) and fresh.meta_loss == cached.meta_loss
    mp._ZOO_CACHE.clear()
