"""Meta pruning against random, magnitude and Torch-Pruning's magnitude pruner on held-out
digits CNNs and tiny ResNets.

    python benchmarks/prune.py              # 3 seeds, digits CNNs and tiny ResNets: results/prune.json
    python benchmarks/prune.py --designs    # metanetwork designs on the tuning seed (10, not reported
                                            # in the main table): results/prune_designs.json
    python benchmarks/prune.py --md-only    # rebuild benchmarks/prune.md from the JSON files

Runs :func:`tasks.meta_prune.run` (each seed trains its own zoo, meta-trains a GMN on part
of it and evaluates on the held-out rest) with one CPU thread (the machine is shared;
more threads only contend). Parts merge into the JSON files as they finish; the page is
rebuilt from them, each part with the command and machine load it ran under.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.meta_prune import MetaPruneConfig, MetaPruneResult, _save, run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ARCHS = (("small_cnn", "Digits CNN"), ("tiny_resnet", "Tiny ResNet"))
TUNING_SEED = 10

# The designs' base config (the main table's of rounds 1 and 2): new = old + gate * delta with
# the gate starting at 0, task loss + lam * group lasso, 24 meta-training networks, 600 steps.
# The main table runs the design MAIN_DESIGN (below) on top of it.
CONFIG = MetaPruneConfig(n_train_nets=24, n_test_nets=3, net_steps=200, meta_steps=600, meta_batch=3,
                         lam=1e-2, lr=5e-3, finetune_steps=30, seeds=(0, 1, 2), progress=False,
                         methods=("random", "magnitude", "meta", "meta (scores)"))

# name -> (what it changes, overrides of CONFIG)
DESIGNS = {
    "closed gate (main config of rounds 1-2)": ("the base config: the main table's until round 3", dict()),
    "closed gate, small zoo": ("6 meta-training networks, 300 steps: the first benchmark's design",
                               dict(n_train_nets=6, meta_steps=300)),
    "open gate": ("gate open and the edge head's last layer zero (still the identity at the start, but the "
                  "gradient reaches the head from the first step), inputs standardised per role",
                  dict(open_gate=True, normalize=True)),
    "open gate, lam 5e-2": ("as above with a 5x stronger group lasso", dict(open_gate=True, normalize=True, lam=5e-2)),
    "open gate, lam 5e-2, pruned task": ("as above + the task loss of the output with the neurons magnitude "
                                         "pruning would remove zeroed (ratio drawn in [0.15, 0.5] per step)",
                                         dict(open_gate=True, normalize=True, lam=5e-2, prune_aware=1.0)),
    "scale edit, pruned task": ("new = old * (1 + gate * delta), gate open, lam 2e-2, pruned-task term",
                                dict(open_gate=True, normalize=True, lam=2e-2, prune_aware=1.0, mode="scale")),
    "global allocation": ("meta prunes the smallest group norms over all layers together (one threshold) "
                          "instead of the same fraction of every layer", dict(allocation="global")),
    "normalised lasso": ("open gate, inputs standardised, pruned-task term, and the group lasso of each network "
                         "divided by its value on the input network (lam 0.3: the same scale on CNNs and ResNets)",
                         dict(open_gate=True, normalize=True, prune_aware=1.0, lasso_norm=True, lam=0.3)),
    "neuron gates": ("as normalised lasso, but the GMN's node head gives one factor per neuron, exp(gate * s), "
                     "applied to every slice of the neuron in every tensor of its group, instead of an edit of "
                     "every weight", dict(mode="neuron", open_gate=True, normalize=True, prune_aware=1.0,
                                          lasso_norm=True, lam=0.3)),
    "neuron gates, 4x zoo": ("as neuron gates, meta-trained on 96 networks (same 600 steps: a quarter of the "
                             "steps per network)", dict(mode="neuron", open_gate=True, normalize=True,
                                                         prune_aware=1.0, lasso_norm=True, lam=0.3, n_train_nets=96)),
    "neuron gates, lam warm-up": ("as neuron gates, lam ramped up linearly from 0 over the first half of the "
                                  "meta steps", dict(mode="neuron", open_gate=True, normalize=True, prune_aware=1.0,
                                                     lasso_norm=True, lam=0.3, lam_warmup=0.5)),
    "neuron gates, lam 1": ("as neuron gates with lam 1 (the group lasso, normalised, as strong as the task "
                            "loss at the start)", dict(mode="neuron", open_gate=True, normalize=True, prune_aware=1.0,
                                                      lasso_norm=True, lam=1.0)),
    "neuron gates, lam 3": ("as neuron gates with lam 3", dict(mode="neuron", open_gate=True, normalize=True,
                                                               prune_aware=1.0, lasso_norm=True, lam=3.0)),
    "neuron gates, soft mask": ("as neuron gates, and the pruned-task term's mask passes the gradient of a soft "
                                "mask (temperature 0.2 of the group's mean norm) to the norms, so that which neurons "
                                "go is learned too", dict(mode="neuron", open_gate=True, normalize=True,
                                                          prune_aware=1.0, lasso_norm=True, lam=0.3,
                                                          mask_temperature=0.2)),
    "rebalance, soft mask": ("the node head's factors applied as the weight space's positive scaling (function "
                             "unchanged, only the group norms that magnitude pruning reads move; groups through a "
                             "batch norm have no such symmetry and stay), soft mask as above",
                             dict(mode="rebalance", open_gate=True, normalize=True, prune_aware=1.0, lasso_norm=True,
                                  lam=0.3, mask_temperature=0.2)),
    "closed gate, 4x zoo": ("the main config meta-trained on 96 networks (same 600 steps: a quarter of the steps "
                            "per network)", dict(n_train_nets=96)),
    "neuron gates, batch statistics": ("as neuron gates, the meta objective with norms on batch statistics (train "
                                       "mode), as the fine-tune runs", dict(mode="neuron", open_gate=True,
                                                                             normalize=True, prune_aware=1.0,
                                                                             lasso_norm=True, lam=0.3,
                                                                             batch_stats=True)),
    # issue 18, third round: what the published method (Liu, Wang and Zhang; repository Yewei-Liu/MetaPruning)
    # does differently: its sparsity term, its pipeline order (fine-tune the edited network, then prune), its
    # pruner (global over max-normalised group norms), the choice of the meta-training length on validation
    # networks; and the metanetwork applied more than once (progressive sparsification)
    "polarize": ("open gate, inputs standardised, and instead of the group lasso the published method's "
                 "sparsity term, DepGraph's growing regularizer (lam 0.1 x 0.5 sum gamma_i norm_i^2, gamma_i = "
                 "16^((max - norm_i) / (max - min)) within each group, detached: a weight decay 16x stronger on a "
                 "group's smallest neuron than on its largest; lam 0.1 is its weight against a mean task loss there)",
                 dict(open_gate=True, normalize=True, sparsity="polarize", lam=0.1)),
    "polarize, lam 1e-2": ("as polarize with lam 0.01", dict(open_gate=True, normalize=True, sparsity="polarize",
                                                             lam=1e-2)),
    "polarize, lam 1e-3": ("as polarize with lam 0.001", dict(open_gate=True, normalize=True, sparsity="polarize",
                                                              lam=1e-3)),
    "polarize 1e-2, fine-tune first": ("as polarize, lam 1e-2, in the published order: the edited network is "
                                       "fine-tuned 10 steps, then pruned and fine-tuned 20 (30 in all, as "
                                       "magnitude's)", dict(open_gate=True, normalize=True, sparsity="polarize",
                                                            lam=1e-2, pre_finetune=10)),
    "polarize 1e-2, global max": ("as polarize, lam 1e-2, pruned as the published method prunes: the lowest "
                                  "group norms divided by their group's largest over all layers together (the "
                                  "edit sets how much each layer loses); the control row prunes the original "
                                  "network the same way", dict(open_gate=True, normalize=True, sparsity="polarize",
                                                               lam=1e-2, allocation="global_max",
                                                               methods=("magnitude", "magnitude (global max)",
                                                                        "meta"))),
    "polarize 1e-2, chosen on validation": ("as polarize, lam 1e-2, with a snapshot every 50 meta steps; the one "
                                            "used is the best on 3 validation networks of the same zoo (never "
                                            "meta-trained on, never tested; mean training-split accuracy of the "
                                            "meta pipeline over the 3 ratios), as the published method picks its "
                                            "meta-training epoch", dict(open_gate=True, normalize=True,
                                                                        sparsity="polarize", lam=1e-2,
                                                                        select_every=50)),
    "polarize 1e-2, applied twice": ("as polarize, lam 1e-2, the metanetwork applied twice (its output fed back "
                                     "in): progressive sparsification at use",
                                     dict(open_gate=True, normalize=True, sparsity="polarize", lam=1e-2,
                                          apply_times=2)),
    "published pipeline": ("polarize (lam 1e-2) + fine-tune first + global max + chosen on validation: every "
                           "difference of the published method that fits this budget, together",
                           dict(open_gate=True, normalize=True, sparsity="polarize", lam=1e-2, pre_finetune=10,
                                allocation="global_max", select_every=50,
                                methods=("magnitude", "magnitude (global max)", "meta"))),
    "polarize 1e-3, global max": ("as polarize 1e-2, global max with lam 0.001",
                                  dict(open_gate=True, normalize=True, sparsity="polarize", lam=1e-3,
                                       allocation="global_max", methods=("magnitude", "magnitude (global max)",
                                                                         "meta"))),
    "polarize 1e-2, global max, lr 5e-4": ("as polarize 1e-2, global max with the metanetwork's learning rate "
                                           "5e-4 instead of 5e-3 (at 5e-3 the task loss of the edited tiny ResNets "
                                           "jumps from 0.05 to 2.4 within 20 meta steps and stays there: the edit "
                                           "breaks them; at 5e-4 it stays under 0.5 over 100 steps, seen in a "
                                           "separate 6-network check, not on the page)",
                                           dict(open_gate=True, normalize=True, sparsity="polarize", lam=1e-2,
                                                lr=5e-4, allocation="global_max",
                                                methods=("magnitude", "magnitude (global max)", "meta"))),
    "neuron gates, polarize, global max": ("the node head's per-neuron factors (as neuron gates) instead of an "
                                           "edit of every weight, meta-trained with the polarizing term (lam "
                                           "1e-2, no pruned-task term), pruned by global max",
                                           dict(mode="neuron", open_gate=True, normalize=True, sparsity="polarize",
                                                lam=1e-2, allocation="global_max",
                                                methods=("magnitude", "magnitude (global max)", "meta"))),
    "closed gate, fine-tune first": ("the main config in the published order (10 fine-tune steps on the edited "
                                     "network, then pruning and 20 steps)", dict(pre_finetune=10)),
    # issue 18, round 4: is the fine-tune budget what separates us from the published method (~240 epochs)?
    # The same designs with 10x the fine-tune, magnitude and the global max control in the same runs.
    "closed gate, fine-tune 300": ("the base config (closed gate of rounds 1-2) with a 10x fine-tune budget: "
                                   "300 steps after pruning for every method of the run, magnitude and the "
                                   "control included", dict(finetune_steps=300,
                                                            methods=("magnitude", "magnitude (global max)", "meta"))),
    "polarize 1e-2, global max, lr 5e-4, fine-tune 300": ("round 3's main design with a 10x fine-tune budget: 300 "
                                                          "steps after pruning for every method of the run",
                                                          dict(open_gate=True, normalize=True, sparsity="polarize",
                                                               lam=1e-2, lr=5e-4, allocation="global_max",
                                                               finetune_steps=300,
                                                               methods=("magnitude", "magnitude (global max)",
                                                                        "meta"))),
}

# issue 18, round 5: the last designs the page's verdict named untried. (b) the edit's strength chosen on
# validation networks, one rule for every architecture: new = old + s * (edit), s from STRENGTH_GRID by the
# validation networks' accuracy after pruning to 3x and the fine-tune; s = 0 is the original network, so on
# the validation networks the rule cannot do worse than what s = 0 prunes (magnitude, or with global max the
# control). (a) a zoo and meta-training budget closer to the published ones: 96 meta-training networks and
# 3000 steps of 3 (about 94 passes over each network; the published run makes 100 epochs of one network per
# step). Each run reports meta at s = 1 and "meta (strength chosen)" from one meta-training.
STRENGTH_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)
_STRENGTH = dict(strength_grid=STRENGTH_GRID, n_val_nets=6,
                 methods=("magnitude", "magnitude (global max)", "meta", "meta (strength chosen)"))
_ROUND3 = dict(open_gate=True, normalize=True, sparsity="polarize", lam=1e-2, lr=5e-4, allocation="global_max")
DESIGNS.update({
    "closed gate, strength on validation": (
        "the base config; its edit at use scaled by s (new = old + s * (edit)), s chosen from "
        f"{', '.join(f'{x:g}' for x in STRENGTH_GRID)} on 6 validation networks of the same zoo (never "
        "meta-trained on, never tested) by their training-split accuracy after pruning to 3x and the fine-tune",
        dict(_STRENGTH)),
    "polarize 1e-2, global max, lr 5e-4, strength on validation": (
        "round 3's main design with the edit's strength chosen as in 'closed gate, strength on validation' (s = 0 "
        "is the global max control)", dict(_ROUND3, **_STRENGTH)),
    "polarize 1e-2, global max, lr 5e-4, 4x zoo, 3000 steps": (
        "round 3's main design meta-trained on 96 networks for 3000 steps (5x the steps, 4x the networks: about "
        "94 passes over each), strength chosen on validation as above", dict(_ROUND3, n_train_nets=96,
                                                                            meta_steps=3000, **_STRENGTH)),
    "closed gate, 4x zoo, 3000 steps": (
        "the base config meta-trained on 96 networks for 3000 steps, strength chosen on validation as above",
        dict(n_train_nets=96, meta_steps=3000, **_STRENGTH)),
})

# What the published method does, read from its code (github.com/Yewei-Liu/MetaPruning, main/ and utils/,
# snapshot of 2025-12-04; nothing copied), against tasks/meta_prune.py. It shaped the third round of designs.
PUBLISHED = [
    "Objective: the task loss of the edited network over the whole training set at every step (batches of 500, "
    "losses summed) plus DepGraph's growing regularizer (Torch-Pruning's GroupNormPruner.regularize, reg 10, "
    "alpha 16): a gradient reg * gamma_i * w on every slice of neuron i (conv/linear weights and batch-norm "
    "scales, not biases), gamma_i = alpha^((max - norm_i) / (max - min)) from the group's detached norms, i.e. a "
    "weight decay 16x stronger on a group's smallest neuron than on its largest, which pulls a group's norms "
    "apart. Ours: the mean task loss of one batch of 128 + lam x group lasso (sum of group norms). Option "
    "`sparsity=\"polarize\"` (lam 0.1 is their weight against a mean loss).",
    "Metanetwork: an 8-layer message-passing GNN (hidden 64) whose edge and node outputs are added to its input "
    "with a fixed factor 0.01 (no gate); AdamW lr 1e-3, x0.1 after epoch 3, weight decay 5e-4, 100 epochs, one "
    "network per step. Ours: a 2-layer GMN (hidden 32) behind a gate, AdamW lr 5e-3, 600 steps of 3 networks.",
    "How strong the edit is: a metanetwork is saved every epoch and the epoch used is found by a binary search "
    "over epochs, looking at the accuracy against speed-up of a validation network that was edited and "
    "fine-tuned (their README: choose the learning-rate milestone first). The strength is tuned per task on "
    "validation networks, not fixed. Option `select_every` (snapshots, the best on validation networks).",
    "Pipeline at use: the network is first pruned 1.32x and fine-tuned 80 epochs (the zoo networks too: their "
    "'initial pruning'), edited by one pass of the metanetwork, fine-tuned 100 epochs (SGD, lr 0.01), pruned, "
    "fine-tuned 140 epochs: the edited network is fine-tuned before it is pruned, 100 of 240 epochs. Option "
    "`pre_finetune` (steps of the same 30-step budget spent before pruning).",
    "Pruner: Torch-Pruning's GroupNormPruner with global pruning over group L2 norms divided by each group's "
    "largest, in 200 small steps until the target speed-up: the edit decides how many neurons each layer "
    "loses. Ours: the same fraction of every group (uniform). Option `allocation=\"global_max\"` (one step).",
    "Zoo: small; their example generation script (ResNet-110) makes 15 networks (5 processes x 3), split "
    "80/20 into meta-training and validation networks (the paper's exact counts not checked); ours: 24 "
    "meta-training networks per seed.",
    "Neither repeated application of the metanetwork nor rounds of meta-training on its own outputs appear in "
    "the code read (one pass at use, one meta-training run); progressive sparsification is tried here as "
    "option `apply_times`.",
]

THIRD_ROUND = [
    "Third round (what the published method does differently, from the design 'polarize' on; measured on the "
    "tuning seed with magnitude in the same runs). Its sparsity term alone does not help with our uniform "
    "pruner: at its own weight (lam 0.1) the held-out digits CNNs are broken (chance), at lam 1e-2 and 1e-3 "
    "meta loses 5.2/10.4/5.1 and 3.8/7.7/4.4 points at 1.5x/2x/3x, although at 1e-2 the edit does pull the "
    "group norms apart (CV 0.21 -> 0.61). Their pipeline order (10 of the 30 fine-tune steps on the edited "
    "network before pruning) loses more (-6.9/-12.0/-6.9; the main config of rounds 1-2 that way -6.9/-10.6/"
    "-4.4): with this budget the steps taken from after pruning cost more than they give. Choosing the "
    "meta-training length on validation networks picked step 50 of 600 and lost (-7.3/-11.6/-5.7); the "
    "metanetwork applied twice loses most (-15.6/-17.9/-4.8). What turns the edit into accuracy is their "
    "pruner: pruning the edited network by its norms divided by each group's largest, over all layers "
    "together, the digits CNN gains -0.5/+8.6/+28.2 points (the published pipeline with every difference "
    "together +0.5/+9.5/+28.0), while the same pruner on the original network (the control) gives "
    "+2.1/-3.1/+0.9: the gain comes from the layer shares the edit sets, not from the allocation. On the tiny "
    "ResNet every open-gate design at the metanetwork's learning rate 5e-3 breaks the held-out networks "
    "(chance accuracy, also after the fine-tune; also with per-neuron gates): a separate check on 6 tiny "
    "ResNets shows the edited networks' task loss jumping from 0.05 to 2.4 within 20 meta steps and staying "
    "there, while at lr 5e-4 it stays under 0.5 (the broken ResNet designs of rounds 1-2 were open-gate "
    "designs at lr 5e-3 too; whether this was their cause is not checked). At lr 5e-4 (the design 'polarize "
    "1e-2, global max, lr 5e-4', round 3's main design) meta is +1.9/+1.9/+14.8 on the digits CNN and "
    "-1.4/+1.9/+3.8 on the tiny ResNet, the latter at less FLOP reduction than magnitude reaches (1.56/2.08/"
    "3.05x against 1.66/2.34/3.55x: uniform allocation cannot stop nearer the target on these narrow "
    "layers) and far below its control (94.9/88.4/72.1 at 1.54/2.10/3.23x): on the tiny ResNet the global "
    "max pruner alone is what beats magnitude, and the edit makes it worse. It did not beat magnitude on "
    "both networks at every ratio (ResNet 1.5x), but it was the best design on both, so the main table was "
    "rerun with it (3 seeds; kept as the section 'Round 3's main run'): it holds on the digits CNN and fails on "
    "the tiny ResNet, so the main table runs the closed gate of rounds 1-2 again (round 4).", ""]

ROUND4 = [
    "Round 4 (the fine-tune budget; `python benchmarks/prune.py --designs --design 'closed gate, fine-tune 300' "
    "--design 'polarize 1e-2, global max, lr 5e-4, fine-tune 300'`, tuning seed, 3 held-out networks): the "
    "published pipeline fine-tunes about 240 epochs, this benchmark 30 steps; the rows 'fine-tune 300' give "
    "every method of the run, magnitude and the global max control included, 300 steps (10x). Magnitude rises "
    "from 80.3/71.1/50.0 to 86.5/82.8/69.7 on the digits CNN and from 93.5/78.4/52.0 to 97.5/97.1/95.1 on the "
    "tiny ResNet. On the tiny ResNet every difference shrinks under 1.5 points (closed gate +0.0/-0.6/-1.5, "
    "round 3's design +0.7/+0.0/-0.9 at less FLOP reduction than magnitude, 1.56/2.08/3.05x against "
    "1.66/2.34/3.55x; control -0.2/-0.3/-0.6): the longer fine-tune makes the choice of neurons matter less, "
    "it does not make the edit pay. On the digits CNN round 3's design stays ahead at 3x (+10.7 ± 3.0, "
    "+14.8 at 30 steps) and level at 1.5x/2x; the closed gate goes from -4.2/-7.5/-2.0 to -2.3/-2.7/+4.6 "
    "(each about one standard error). The hypothesis that the fine-tune budget is what separates us from the published method "
    "is not supported: with 10x the budget neither design meets the target on both networks on this seed.", ""]

ROUND5 = [
    "Round 5 (the two designs the verdict of round 4 named untried; `python benchmarks/prune.py --designs "
    "--design 'closed gate, strength on validation' --design 'polarize 1e-2, global max, lr 5e-4, strength on "
    "validation' --design 'polarize 1e-2, global max, lr 5e-4, 4x zoo, 3000 steps' --design 'closed gate, 4x zoo, "
    "3000 steps'`, tuning seed 10, one process, load 6-7.5 on 2 shared cores, 55 min). (b) The edit's strength "
    "chosen on validation networks: new = old + s * (edit), s from 0, 0.5, 1, 2, 4 chosen per architecture by the "
    "training-split accuracy of 6 validation networks (never meta-trained on, never tested) after pruning to 3x "
    "and the 30-step fine-tune, the same rule for every architecture. s = 0 is the original network, so the rule "
    "falls back to magnitude (closed gate) or to the control (global max designs) whenever the edit does not "
    "help the validation networks: on them it cannot do worse than that by construction, and the held-out "
    "networks judge it. Closed gate: on the digits CNN s = 2 is chosen (43.2% at s = 0, 46.3% at s = 2 on "
    "validation) and loses on the held-out networks, -4.4/-6.4/-4.5 (s = 1: -4.0/-5.1/-4.4): the validation "
    "choice does not carry over; on the tiny ResNet s = 1, -1.5/+0.6/+2.2. Round 3's design: on the digits CNN "
    "s = 1 (66.4% against 29.7% at s = 0 on validation), +1.4/+10.2/+27.2 on the held-out networks (the same "
    "design on the same networks was +1.9/+1.9/+14.8 in round 3: the validation networks are trained before "
    "meta-training, so the metanetwork is another draw; two draws of one design differ as much as designs "
    "do); on the tiny ResNet s = 0 is chosen (65.9% against 48.6% at s = 1), i.e. the control, the published "
    "pruner on the original network: +1.4/+10.0/+20.1 (s = 1: -0.3/+4.4/+3.4). On the tuning seed this design "
    "beat magnitude on both networks by the target's margins, so the main table was run with it (3 seeds, "
    "above). (a) A zoo and meta-training budget closer to the published ones: 96 meta-training networks and "
    "3000 steps of 3 networks (about 94 passes over each; the published run makes 100 epochs of one network per "
    "step), with the strength rule; the held-out networks are other networks of the same seed (the zoo is "
    "longer), hence the other magnitude column. Round 3's design edits far more with the longer training "
    "(group-norm CV 0.25 -> 0.83 on the digits CNN, 0.29 at 600 steps; 0.04 -> 0.36 on the tiny ResNet): on the "
    "digits CNN s = 1 is +0.3/+4.9/+2.1 and the chosen s = 0.5 (70.0% against 69.9% at s = 1 on validation) "
    "+5.8/+9.2/+0.9, less at 3x than at 600 steps; on the tiny ResNet the edit breaks every held-out network "
    "(10.0%, chance, also after the fine-tune, at every ratio) and the rule falls back to s = 0, the control "
    "(+1.1/+0.2/+9.1). The closed gate still hardly edits with 5x the steps (CV 0.25 -> 0.26): digits CNN "
    "s = 1 +2.5/-1.6/-5.7, the rule chooses s = 0 (55.1% at s = 0 and at s = 1 on validation, a tie goes to "
    "the first) and prunes exactly what magnitude prunes; its tiny-ResNet run was stopped to leave the "
    "machine to the main table (not measured). More meta-training at the same learning rate does not make "
    "the amortised edit better: it makes it stronger, which on the tiny ResNet breaks the networks (the "
    "published schedule divides the learning rate by 10 after 3 epochs; not tried).", ""]

VERDICT = [
    "Verdict after five rounds (about 40 designs, tables below): on the means of 3 seeds the main table now "
    "meets the target on both networks, but on the tiny ResNet not by the metanetwork. The main table (round 5) "
    "runs round 3's design (the published method's sparsity term and pruner, meta lr 5e-4) with the edit's "
    "strength chosen on validation networks, one rule for both networks: per seed, s in new = old + s * (edit) "
    "is chosen from 0, 0.5, 1, 2, 4 by the accuracy of 6 validation networks (never meta-trained on, never "
    "tested) after pruning to 3x and the 30-step fine-tune. s = 0 is the original network: the rule then prunes "
    "exactly what the control (the published pruner, global max, on the original network) prunes, so on the "
    "validation networks it cannot do worse than the control by construction; the held-out networks judge it. "
    "Digits CNN: s = 0.5/1/1 chosen, meta +4.6/+4.1/+5.8 (± 4.2/3.6/4.5) over magnitude (each about one standard error) and +6.1/+9.6/+9.0 "
    "over the control: on the digits CNN the metanetwork's edit is what gains, as in round 3 (+4.1/+4.8/+6.3). "
    "Tiny ResNet: s = 0 chosen on every seed (validation accuracy at 3x falls with every edit, e.g. 65.1% at "
    "s = 0 against 41.2% at s = 1 on seed 0), so meta is the control, +3.3/+9.0/+9.3 (at less FLOP reduction than magnitude reaches, 1.55/2.07/3.18x against 1.66/2.34/3.55x) over magnitude: what beats "
    "magnitude there is the published pruner alone; the metanetwork is switched off (at s = 1 it is -25.2/-23.6/-16.3). "
    "The rule did its job, falling back where the edit hurts, but it does not make the amortised edit of a "
    "tiny ResNet useful. The same design at s = 1 over 3 seeds is +3.6/+3.9/+4.6 (CNN) and -25.2/-23.6/-16.3 (ResNet). "
    "Everything the issue's method could use has now been tried: the published objective, pruner, pipeline "
    "order, snapshot choice and fine-tune budget (rounds 3-4), a zoo and meta-training budget of the published "
    "scale (96 networks x 3000 steps, about 94 passes over each network, round 5) and the edit's strength chosen "
    "on validation networks (round 5). Why the metanetwork itself stays out of reach of the target on the tiny "
    "ResNet, from the measurements: (1) an edit that helps must move the group norms a lot (the CNN's CV 0.21 -> "
    "0.61 for +28 points at 3x on the tuning seed), and a GMN meta-trained here gives either no edit (closed "
    "gate: CV unchanged, meta = magnitude within noise, also with 96 networks x 3000 steps) or an edit that "
    "costs the unseen tiny ResNet accuracy the 30-step fine-tune does not recover; more meta-training at the "
    "same learning rate makes the edit stronger, not better (96 x 3000: every held-out tiny ResNet at chance); "
    "the meta objective optimised on each held-out network (direct edit, 200 extra steps) gives +5.6 and +25.5 "
    "points at 3x: what fails is the amortisation, not the objective. (2) On the tiny ResNet the uniform "
    "magnitude baseline is weak: the published pruner alone is +3.3/+9.0/+9.3 over 3 seeds, more than any "
    "metanetwork design gave. (3) The fine-tune budget is not what separates us from the published method "
    "(round 4: with 300 steps every tiny-ResNet difference is under 1.5 points). (4) With 3 held-out networks "
    "per seed a design's tuning-seed figure does not carry over (round 3's design: -1.4/+1.9/+3.8 on the "
    "tuning seed, -34.8/-32.3/-21.0 over 3 seeds), and two meta-trainings of one design on the same networks "
    "differ by up to 12 points at 3x (+14.8 and +27.2). The strength rule's main-table figures are within "
    "about one standard error on the digits CNN; on the tiny ResNet they are the control's.", ""]

# the tiny ResNets are slower: only these designs run on them
RESNET_DESIGNS = ("closed gate (main config of rounds 1-2)", "open gate, lam 5e-2, pruned task", "normalised lasso", "neuron gates",
                  "neuron gates, 4x zoo", "neuron gates, lam warm-up", "neuron gates, lam 1", "neuron gates, lam 3",
                  "neuron gates, soft mask", "closed gate, 4x zoo", "neuron gates, batch statistics",
                  "polarize", "polarize, lam 1e-2", "polarize, lam 1e-3", "polarize 1e-2, fine-tune first",
                  "polarize 1e-2, global max", "polarize 1e-2, chosen on validation", "polarize 1e-2, applied twice",
                  "published pipeline", "closed gate, fine-tune first", "polarize 1e-3, global max",
                  "neuron gates, polarize, global max", "polarize 1e-2, global max, lr 5e-4",
                  "closed gate, fine-tune 300", "polarize 1e-2, global max, lr 5e-4, fine-tune 300",
                  "closed gate, strength on validation", "polarize 1e-2, global max, lr 5e-4, strength on validation",
                  "polarize 1e-2, global max, lr 5e-4, 4x zoo, 3000 steps", "closed gate, 4x zoo, 3000 steps")


# The main table's design (round 5): round 3's design with the edit's strength chosen on validation
# networks, the one design that beat magnitude on both networks by the target's margins on the tuning
# seed (one rule for every architecture). Earlier main runs are kept as their own sections (KEPT):
# round 3's (design "polarize 1e-2, global max, lr 5e-4") in results/prune_round3.json, round 4's (the
# closed gate of rounds 1-2) in results/prune_round4.json.
# "magnitude (global max)" is a control (the published pruner on the original network).
MAIN_DESIGN = "polarize 1e-2, global max, lr 5e-4, strength on validation"
ROUND3_DESIGN = "polarize 1e-2, global max, lr 5e-4"
ROUND3_COMMIT = "6595482"
# earlier main runs kept as their own sections: (JSON under results/, design, commit it was measured at, round)
KEPT = [("prune_round4.json", "closed gate (main config of rounds 1-2)", "58e5ef9", "Round 4"),
        ("prune_round3.json", ROUND3_DESIGN, ROUND3_COMMIT, "Round 3")]
MAIN_METHODS = ("random", "magnitude", "magnitude (global max)", "meta", "meta (scores)")


def torch_pruning_magnitude(net, example, speedup: float, seed: int):
    """Torch-Pruning's magnitude pruner (L2 importance, uniform ratio over its groups, the
    output layer ignored as its users do), the ratio found by bisection to reach the same
    FLOP reduction as the others. None of metanet is used to prune."""
    import copy

    import torch_pruning as tp
    from torch import nn

    from metanet.prune import count_flops

    base = count_flops(net, example)
    out_features = net(*example).shape[-1]

    def build(ratio: float):
        m = copy.deepcopy(net)
        ignored = [x for x in m.modules() if isinstance(x, nn.Linear) and x.out_features == out_features]
        pruner = tp.pruner.MagnitudePruner(m, example[0], importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
        return m, base / count_flops(m, example)

    lo, hi = 0.0, 0.95
    best = build(hi)
    for _ in range(8):
        mid = (lo + hi) / 2
        m, red = build(mid)
        if red >= speedup:
            hi, best = mid, (m, red)
        else:
            lo = mid
    return best


_DIRECT: dict[int, object] = {}


def direct_edit(net, example, speedup: float, seed: int, steps: int = 200):
    """Not a method with the same budget: an upper bound for what an edit of the meta
    objective can give. The held-out network itself is optimised 200 steps (``steps``) on the
    meta-training objective (task loss + lam 5e-2 * group lasso + pruned-task loss; Adam,
    lr 1e-3), with no metanetwork, then magnitude-pruned and fine-tuned like the
    others. The metanetwork is meant to produce such an edit in one forward pass."""
    import copy

    import torch.nn.functional as F
    from torch.func import functional_call

    from metanet.prune import prune
    from metanet.space import WeightSpace
    from tasks.meta_prune import group_lasso, masked
    from zoo.data import load_dataset

    ws = WeightSpace.of(net, example)
    if id(net) not in _DIRECT:
        data = load_dataset("digits")
        params = {n for n, _ in net.named_parameters()}
        w = {k: v.detach().clone().unsqueeze(0).requires_grad_(k in params) for k, v in net.state_dict().items()}
        opt = torch.optim.Adam([v for k, v in w.items() if k in params], lr=1e-3)
        template = copy.deepcopy(net).eval()
        gen = torch.Generator().manual_seed(seed)
        lo, hi = CONFIG.mask_ratios

        def task(d, x, y):
            return F.cross_entropy(functional_call(template, {k: v[0] for k, v in d.items()}, (x,)), y)

        for _ in range(steps):
            idx = torch.randint(0, len(data.y_train), (CONFIG.batch_size,), generator=gen)
            x, y = data.x_train[idx], data.y_train[idx]
            r = lo + (hi - lo) * float(torch.rand((), generator=gen))
            loss = task(w, x, y) + 5e-2 * group_lasso(ws, w, params) + task(masked(ws, w, params, r), x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        edited = copy.deepcopy(net)
        edited.load_state_dict({k: v[0].detach() for k, v in w.items()})
        _DIRECT[id(net)] = edited.eval()
    res = prune(_DIRECT[id(net)], example, "magnitude", speedup=speedup, latency=False, ws=ws)
    return res.model, res.flops_reduction


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _merge(path: Path, key: str, value: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))


def _result(entry: dict) -> MetaPruneResult:
    cfg = dict(entry["config"])
    for k in ("speedups", "seeds", "methods", "mask_ratios"):
        if k in cfg:
            cfg[k] = tuple(cfg[k])
    known = MetaPruneConfig.__dataclass_fields__
    res = MetaPruneResult(MetaPruneConfig(**{k: v for k, v in cfg.items() if k in known}))
    res.rows, res.spread = entry["rows"], entry.get("spread", [])
    return res


def run_main(archs) -> None:
    try:
        import torch_pruning  # noqa: F401   optional benchmark dependency
        extra = {"torch-pruning magnitude": torch_pruning_magnitude}
    except ImportError:
        print("torch-pruning is not installed: its column is left out (pip install torch-pruning)")
        extra = {}
    for arch, label in ARCHS:
        if arch not in archs:
            continue
        over = {k: v for k, v in DESIGNS[MAIN_DESIGN][1].items() if k != "methods"}
        methods = MAIN_METHODS + (("meta (strength chosen)",) if over.get("strength_grid") else ())
        config = replace(CONFIG, arch=arch, methods=methods, **over)
        t0, load0 = time.perf_counter(), _load()
        res = run(config, extra_methods=extra)
        _save(res, RESULTS / "prune_run")
        (RESULTS / "prune_run" / "accuracy.png").replace(RESULTS / f"prune_accuracy_{arch}.png")
        shutil.rmtree(RESULTS / "prune_run")
        _merge(RESULTS / "prune.json", arch, {
            "config": asdict(config), "rows": res.rows, "spread": res.spread, "strength": res.strength,
            "minutes": (time.perf_counter() - t0) / 60, "load": [load0, _load()],
            "command": "python benchmarks/prune.py"})


def run_designs(archs, only=None) -> None:
    extra = {"direct edit (upper bound)": direct_edit}
    first = next(iter(DESIGNS))
    unknown = [n for n in only or () if n not in DESIGNS]
    if unknown:
        raise SystemExit(f"--design: unknown {unknown}; known: {list(DESIGNS)}")
    for arch, _ in ARCHS:
        if arch not in archs:
            continue
        for name, (_, over) in DESIGNS.items():
            if (arch != "small_cnn" and name not in RESNET_DESIGNS) or (only and name not in only):
                continue
            config = replace(CONFIG, arch=arch, seeds=(TUNING_SEED,), **{"methods": ("magnitude", "meta"), **over})
            t0, load0 = time.perf_counter(), _load()
            res = run(config, log=lambda m: None, extra_methods=extra if name == first else None)
            print(f"{arch} / {name}:\n{res.table()}", flush=True)
            _merge(RESULTS / "prune_designs.json", f"{arch}/{name}", {
                "config": asdict(config), "rows": res.rows, "spread": res.spread, "selection": res.selection,
                "strength": res.strength, "minutes": (time.perf_counter() - t0) / 60, "load": [load0, _load()],
                "command": f"python benchmarks/prune.py --designs --arch {arch} --design '{name}'"})


def _spread_line(spread: list[dict]) -> str:
    if not spread:
        return ""
    avg = {w: {k: sum(s[w][k] for s in spread) / len(spread) for k in ("cv", "small")} for w in ("before", "after")}
    return (f"Group norms of the held-out networks before -> after the metanetwork: mean coefficient of variation "
            f"within a group {avg['before']['cv']:.2f} -> {avg['after']['cv']:.2f}, neurons under 10% of their "
            f"group's largest norm {100 * avg['before']['small']:.0f}% -> {100 * avg['after']['small']:.0f}%.")


def _paired_sem(res: MetaPruneResult, speedup: float, method: str = "meta") -> float:
    acc = {(r["seed"], r["net"], r["method"]): r["accuracy"] for r in res.rows if r["speedup"] == speedup}
    d = [100 * (acc[(a, b, method)] - acc[(a, b, "magnitude")]) for (a, b, m) in acc if m == method]
    if len(d) < 2:
        return float("nan")
    mean = sum(d) / len(d)
    return (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5


def _methods_text(cfg: dict, design: str = MAIN_DESIGN) -> str:
    """How the main table's methods prune, for its config."""
    if cfg.get("allocation") == "global_max":
        meta = (f"The metanetwork (design '{design}': an edit of every weight, gate open, inputs "
                f"standardised, AdamW lr {cfg['lr']:g}) is meta-trained on the task loss + {cfg['lam']:g} x the "
                f"published method's growing regularizer (alpha {cfg.get('alpha', 16):g}; see 'What the "
                "published method does'). random and magnitude prune to the FLOP-reduction target "
                "with metanet.prune, the same fraction of every group, found by bisection; meta prunes the "
                "metanetwork's output as the published method prunes: the lowest group norms divided by their "
                "group's largest, over all layers together (the edit sets each layer's share), the fraction "
                "found by bisection; magnitude (global max) prunes the original network that way (the control: "
                "the allocation without the metanetwork); meta (scores) prunes the original network by the "
                "output's max-normalised norms, globally.")
        if cfg.get("pre_finetune"):
            meta += (f" meta's edited network is fine-tuned {cfg['pre_finetune']} of the {cfg['finetune_steps']} "
                     "steps before it is pruned.")
        return meta + _strength_text(cfg)
    text = (f"The metanetwork (design '{design}': new = old + gate * delta, the gate starting at 0, AdamW lr "
            f"{cfg['lr']:g}) is meta-trained on the task loss + {cfg['lam']:g} x group lasso. random, magnitude and "
            "meta prune to the FLOP-reduction target with metanet.prune (the same fraction of every group, found "
            "by bisection); meta prunes the metanetwork's output by its group norms, meta (scores) prunes the "
            "original network keeping the neurons whose group norms are largest in the output.")
    if "magnitude (global max)" in cfg.get("methods", ()):
        text += (" magnitude (global max) is a control without a metanetwork: the published method's pruner (the "
                 "lowest group norms divided by their group's largest, over all layers together, the fraction "
                 "found by bisection) on the original network.")
    return text + _strength_text(cfg)


def _strength_text(cfg: dict) -> str:
    if not cfg.get("strength_grid"):
        return ""
    return (" meta (strength chosen) prunes old + s * (the metanetwork's edit), s chosen per seed from "
            f"{', '.join(f'{x:g}' for x in cfg['strength_grid'])} by the accuracy (training split) of "
            f"{cfg['n_val_nets']} validation networks of the seed's zoo (never meta-trained on, never tested) after "
            f"pruning to {max(cfg['speedups']):g}x and the fine-tune, the same rule for every architecture; s = 0 "
            "is the original network, so the rule prunes what "
            + ("the control (global max on the original network)" if cfg.get("allocation") == "global_max"
               else "magnitude") + " prunes whenever the edit does not help the validation networks: by "
            "construction it is not worse than that on them; the held-out networks judge it.")


def _summary_line(res: MetaPruneResult, label: str, strength: list | None = None) -> str:
    """meta against magnitude (and its control, where measured) at every ratio, with the target's verdict.
    With the edit's strength chosen on validation networks the headline is "meta (strength chosen)"."""
    sp = res.config.speedups
    head = "meta (strength chosen)" if any(r["method"] == "meta (strength chosen)" for r in res.rows) else "meta"
    diff = [100 * (res.mean(head, s) - res.mean("magnitude", s)) for s in sp]
    met = all(d >= 0 for d in diff) and diff[-1] >= 2
    fl = {m: [res._mean("flops_reduction", m, s) for s in sp] for m in (head, "magnitude")}
    less = [s for s, a, b in zip(sp, fl[head], fl["magnitude"]) if a < 0.95 * b]
    line = (f"- {label}: {head} minus magnitude " + ", ".join(
        f"{d:+.1f} (± {_paired_sem(res, s, head):.1f})" for d, s in zip(diff, sp))
        + f" points at {' / '.join(f'{s}x' for s in sp)}: target " + ("met on the means" if met else
                                                                      "**not met**"))
    if head != "meta":
        line += ("; the strength chosen per seed " + ", ".join(f"s = {x['chosen']:g} (seed {x['seed']})"
                                                              for x in strength or [])
                 + "; meta at s = 1 minus magnitude " + " / ".join(
                     f"{100 * (res.mean('meta', s) - res.mean('magnitude', s)):+.1f}" for s in sp))
    line += (f"; FLOP reduction reached by {head} " + " / ".join(f"{a:.2f}x" for a in fl[head])
             + ", by magnitude " + " / ".join(f"{b:.2f}x" for b in fl["magnitude"]))
    if less:
        line += f" (meta pruned less at {' / '.join(f'{s}x' for s in less)})"
    if any(r["method"] == "magnitude (global max)" for r in res.rows):
        ctl = [100 * (res.mean("magnitude (global max)", s) - res.mean("magnitude", s)) for s in sp]
        line += ("; the control, the published pruner (global max) on the original network, minus magnitude "
                 + " / ".join(f"{d:+.1f}" for d in ctl))
        if res.config.allocation == "global_max":
            ctl = [100 * (res.mean(head, s) - res.mean("magnitude (global max)", s)) for s in sp]
            line += (f"; {head} minus its control (the same global max pruner on the original network) "
                     + " / ".join(f"{d:+.1f}" for d in ctl))
    return line + "."


def write_md() -> None:
    main = json.loads((RESULTS / "prune.json").read_text()) if (RESULTS / "prune.json").exists() else {}
    designs = (json.loads((RESULTS / "prune_designs.json").read_text())
               if (RESULTS / "prune_designs.json").exists() else {})
    text = ["# Pruning: held-out accuracy against FLOP reduction", ""]
    summary = []
    for arch, label in ARCHS:
        if "command" not in main.get(arch, {}):
            continue
        summary.append(_summary_line(_result(main[arch]), label, main[arch].get("strength")))
    if summary:
        text += ["Target of the issue: meta pruning at least as good as magnitude at every FLOP reduction and at "
                 "least 2 points better at 3x (means over the held-out networks of 3 seeds, same fine-tune). "
                 "± is the standard error of the mean paired difference over the held-out networks: a "
                 "difference within it is not a measured effect.", ""]
        text += summary + [""] + VERDICT
    for arch, label in ARCHS:
        if "command" not in main.get(arch, {}):     # absent, or left by an older version of this script
            continue
        e = main[arch]
        res, cfg = _result(e), e["config"]
        n = len({(r["seed"], r["net"]) for r in res.rows})
        text += [
            f"## {label}", "",
            f"Command: `{e['command']}` ({e['minutes']:.0f} min for this part, 1 CPU thread, load average "
            f"{e['load'][0]:.1f} at the start and {e['load'][1]:.1f} at the end on 2 shared cores). {label} "
            f"(zoo.models `{arch}`, width {cfg['channels']}, 8x8 digits), trained here {cfg['net_steps']} steps each; "
            f"per seed {cfg['n_train_nets']} networks meta-train the GMN ({cfg['meta_steps']} steps) and "
            f"{cfg['n_test_nets']} held-out networks are pruned ({n} held-out networks over seeds {cfg['seeds']}). "
            + _methods_text(cfg) + " Torch-Pruning's column uses its MagnitudePruner (L2 importance, one ratio, output "
            "layer ignored), its ratio found by bisection to the same FLOP reduction. Each then fine-tunes "
            f"{cfg['finetune_steps']} steps (Adam, lr 1e-3, batch {cfg['batch_size']}).", "",
            "Mean held-out test accuracy (%) after the fine-tune, and per method the FLOP reduction reached / "
            "the latency speed-up measured (best of 10 forward passes of the whole digits test split, pruned "
            "against unpruned, interleaved):", "", res.table(), "",
            "Before the fine-tune (same networks, pruned only):", "", res.table_before_finetune(), "",
            _spread_line(res.spread), "",
            "These networks are so small that per-op overhead, not arithmetic, sets most of the latency; "
            "methods at the same FLOP reduction have the same layer sizes, so the spread of their latency "
            "speed-ups is measurement noise of the shared, loaded machine.", "",
            f"![accuracy against FLOP reduction, {label}](results/prune_accuracy_{arch}.png)", "",
            f"Config: `{json.dumps(cfg)}`", ""]
    for fname, design, commit, rnd in KEPT:
        kept = json.loads((RESULTS / fname).read_text()) if (RESULTS / fname).exists() else {}
        if not any("command" in kept.get(arch, {}) for arch, _ in ARCHS):
            continue
        stem = fname[:-len(".json")]
        text += [f"## {rnd}'s main run (design '{design}'), kept", "",
                 f"Measured by `python benchmarks/prune.py` at commit {commit}, when the main table ran the "
                 f"design '{design}' (the main table runs '{MAIN_DESIGN}' now); its JSON is kept "
                 f"as results/{fname}. Same seeds, zoos, held-out networks and 30-step fine-tune as the "
                 "main table above (its random and magnitude columns are the same networks pruned the same way).",
                 ""]
        for arch, label in ARCHS:
            if "command" not in kept.get(arch, {}):
                continue
            e = kept[arch]
            res = _result(e)
            text += [f"### {label} ({rnd.lower()})", "", _summary_line(res, label, e.get("strength"))[2:], "",
                     f"{e['minutes']:.0f} min for this part, 1 CPU thread, load average {e['load'][0]:.1f} at the "
                     f"start and {e['load'][1]:.1f} at the end on 2 shared cores. "
                     + _methods_text(e["config"], design), "",
                     "Mean held-out test accuracy (%) after the fine-tune, with FLOP reduction / latency speed-up:",
                     "", res.table(), "", "Before the fine-tune:", "", res.table_before_finetune(), "",
                     _spread_line(res.spread), "",
                     f"![accuracy against FLOP reduction, {label}, {rnd.lower()}](results/{stem}_accuracy_{arch}.png)",
                     "", f"Config: `{json.dumps(e['config'])}`", ""]
    text += ["## What the published method does", "",
             "Read from the authors' code (github.com/Yewei-Liu/MetaPruning, main/ and utils/; learnt from, "
             "nothing copied), against tasks/meta_prune.py; each difference that fits this budget is an option of "
             "tasks/meta_prune.py and a design of the third round below.", ""]
    text += [f"- {x}" for x in PUBLISHED] + [""]
    if designs:
        text += ["## Metanetwork designs (tuning seed)", "",
                 f"Command: `python benchmarks/prune.py --designs`. Seed {TUNING_SEED} only (its own zoo, "
                 "3 held-out networks, not in the main table): each design changes the main config as said; "
                 "mean held-out accuracy (%) after the same fine-tune, magnitude measured in the same run.", "",
                 "| network | design | magnitude 1.5x / 2x / 3x | it 1.5x / 2x / 3x | it - magnitude (± s.e.) | "
                 "it before fine-tune 3x | group-norm CV before -> after |", "|---|---|---|---|---|---|---|"]
        shown = set()
        for key, e in designs.items():
            arch, name = key.split("/", 1)
            res = _result(e)
            sp = res.config.speedups
            mag = " / ".join(f"{100 * res.mean('magnitude', s):.1f}" for s in sp)
            cv = (f"{sum(x['before']['cv'] for x in res.spread) / len(res.spread):.2f} -> "
                  f"{sum(x['after']['cv'] for x in res.spread) / len(res.spread):.2f}") if res.spread else ""
            for method in dict.fromkeys(r["method"] for r in res.rows):
                if method == "magnitude":
                    continue
                if method not in ("meta", "meta (strength chosen)", "direct edit (upper bound)"):  # a control:
                    # once per network and run
                    same = (arch, method, tuple(sorted((r["seed"], r["net"], r["speedup"], r["accuracy"])
                                                       for r in res.rows if r["method"] == method)))
                    if same in shown:
                        continue
                    shown.add(same)
                acc = " / ".join(f"{100 * res.mean(method, s):.1f}" for s in sp)
                diff = " / ".join(f"{100 * (res.mean(method, s) - res.mean('magnitude', s)):+.1f} "
                                  f"(± {_paired_sem(res, s, method):.1f})" for s in sp)
                before = f"{100 * res._mean('accuracy_before_finetune', method, sp[-1]):.1f}"
                if method == "meta":
                    label = name + "".join(f" (snapshot of step {x['chosen']} chosen)" for x in e.get("selection", []))
                    if e.get("strength"):
                        label += ": s = 1"
                elif method == "meta (strength chosen)":
                    label = name + ": s chosen on validation" + "".join(
                        f" (s = {x['chosen']:g}; validation accuracy at {x['speedup']:g}x "
                        + ", ".join(f"{g:g}: {100 * a:.1f}" for g, a in zip(x["grid"], x["val_accuracy"])) + ")"
                        for x in e["strength"])
                elif method == "direct edit (upper bound)":
                    label = f"{method}: no metanetwork, not the same budget"
                else:
                    label = f"control: {method}, no metanetwork (the same networks as every design of this seed)"
                    if res.config.finetune_steps != CONFIG.finetune_steps:
                        label += f", fine-tune {res.config.finetune_steps} steps"
                text.append(f"| {dict(ARCHS)[arch]} | {label} | {mag} | {acc} | {diff} | {before} | "
                            f"{cv if method == 'meta' else ''} |")
        text += ["", "Reading: the metanetwork that lost least (closed gate) hardly edits, so it prunes almost "
                 "what magnitude prunes (the group-norm spread does not move). Designs that do edit (open gate, "
                 "stronger group lasso) drive group norms apart, but the edit of a network the metanetwork has "
                 "not seen costs accuracy that the fine-tune does not win back; with the open gate and the "
                 "pruned-task term the held-out tiny ResNets are broken (chance accuracy, also after the "
                 "fine-tune). Pruning the smallest norms over all layers at once (global allocation) empties "
                 "whole layers, since the edited norms are not comparable across layers. The direct edit, the "
                 "same objective optimised on each held-out network, shows what an edit of this kind can give: "
                 "the objective is sound; what fails is its amortisation by a GMN meta-trained on a zoo of "
                 "24 networks.", "",
                 "Second round (issue 18's candidates, from the design 'normalised lasso' on): no design beats "
                 "magnitude on both networks, so the closed gate stays the main config. Normalising the group "
                 "lasso by the input network's does not save the edit of every weight: the held-out tiny ResNets "
                 "are again broken (chance accuracy after the fine-tune). Per-neuron gates from the node head "
                 "(the metanetwork only chooses how much to shrink each neuron) at lam 0.3 leave the group norms "
                 "where they were and prune what magnitude prunes on the digits CNN (level with it, where the "
                 "closed gate loses on the same networks), but lose 4 and 8 points at 1.5x and 2x on the tiny "
                 "ResNet; lam 1 loses without moving the norms, lam 3 moves them and loses 9.5 points at 3x; a "
                 "soft mask that lets the pruned-task loss choose the neurons and a lam warm-up do not help; "
                 "with batch statistics (tiny ResNet only) the held-out networks are broken (cause not "
                 "investigated). The rebalancing edit (the weight space's positive scaling: the function stays, "
                 "only the norms magnitude pruning reads move) exists only where no batch norm breaks the "
                 "symmetry, i.e. on the digits CNN, and loses there; without the group lasso its factors "
                 "overflowed (the run failed; the exponent is now clipped to [-8, 8], not rerun). A 4x zoo (96 "
                 "networks, same 600 steps) is level with or above magnitude on the digits CNN, with the closed "
                 "gate and with neuron gates, but on the tiny ResNet both lose at every ratio, 8.6 and 10.6 points "
                 "at 3x; its held-out networks are other networks of the same seed (the zoo is longer), hence "
                 "its other magnitude column. With 3 held-out networks per design the spread is large: one "
                 "network's accuracy after the fine-tune moves by up to 20 points when a few other neurons are "
                 "removed, so differences within the ± are not effects.", ""]
        text += THIRD_ROUND + ROUND4 + ROUND5
        text += ["Designs:", ""] + [f"- {name}: {what}." for name, (what, _) in DESIGNS.items()]
        text += [f"- direct edit (upper bound): {' '.join(direct_edit.__doc__.split())}", ""]
    (ROOT / "benchmarks" / "prune.md").write_text("\n".join(text))
    print("wrote benchmarks/prune.md")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--designs", action="store_true", help="run the design sweep on the tuning seed")
    p.add_argument("--md-only", action="store_true", help="rebuild prune.md from the JSON files")
    p.add_argument("--arch", choices=[a for a, _ in ARCHS], action="append", help="only these (default: both)")
    p.add_argument("--design", action="append", help="with --designs: only these designs (default: all); the "
                   "others' results stay in the JSON")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    archs = set(args.arch or [a for a, _ in ARCHS])
    if not args.md_only:
        if args.designs:
            run_designs(archs, args.design)
        else:
            run_main(archs)
    write_md()
    return 0


if __name__ == "__main__":
    sys.exit(main())
