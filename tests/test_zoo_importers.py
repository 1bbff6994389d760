"""Importers, each on small files written here in the public format; plus the refusal of
files that need pickle."""
import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.importers import PickleRefusedError, load_checkpoint_file


# ------------------------------------------------------------------- Small CNN Zoo
def _tf_forward(flat, layout, x_hwc, act):
    """Reference forward pass of the Small CNN Zoo network straight from the flat TF
    vector: HWIO kernels, 'valid' padding, stride 2, GAP, dense (in, out)."""
    var = {r["varname"]: flat[r["start"]:r["end"]].reshape(r["shape"]) for r in layout}
    f = np.tanh if act == "tanh" else (lambda v: np.maximum(v, 0))
    h = x_hwc
    for name in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = var[f"sequential/{name}/kernel:0"], var[f"sequential/{name}/bias:0"]
        out_hw = (h.shape[0] - 3) // 2 + 1
        o = np.zeros((out_hw, out_hw, k.shape[3]))
        for i in range(out_hw):
            for j in range(out_hw):
                o[i, j] = np.einsum("hwc,hwco->o", h[2 * i:2 * i + 3, 2 * j:2 * j + 3], k) + b
        h = f(o)
    g = h.mean((0, 1))
    return g @ var["sequential/dense/kernel:0"] + var["sequential/dense/bias:0"]


def _write_small_cnn_zoo(root: Path, n_nets=3, steps=(0, 86), nan_row=None):
    rng = np.random.default_rng(0)
    # layout as the released zoo: per layer bias first, then kernel
    shapes = [("sequential/conv2d/bias:0", (16,)), ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),
              ("sequential/conv2d_1/bias:0", (16,)), ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
              ("sequential/conv2d_2/bias:0", (16,)), ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
              ("sequential/dense/bias:0", (10,)), ("sequential/dense/kernel:0", (16, 10))]
    layout, start = [], 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        layout.append({"varname": name, "start": start, "end": start + size, "size": size, "shape": shape})
        start += size
    assert start == 4970
    rows, weights = [], []
    for net in range(n_nets):
        act = ["relu", "tanh"][net % 2]
        for step in steps:
            weights.append(rng.normal(0, 0.3, 4970).astype(np.float32))
            rows.append({"": len(rows), "config.activation": act, "config.b_init": "zeros",
                         "config.dataset": "mnist", "config.dnn_architecture": "cnn",
                         "config.dropout": 0.1 * net, "config.epochs": 86,
                         "config.init_std": 0.05, "config.l2reg": 1e-4, "config.learning_rate": 0.003,
                         "config.optimizer": "adam", "config.random_seed": net,
                         "config.train_fraction": 1.0, "config.w_init": "he_normal",
                         "modeldir": f"/zoo/run{net}", "step": step,
                         "test_accuracy": 0.5 + 0.01 * len(rows), "test_loss": 1.5,
                         "train_accuracy": 0.6, "train_loss": 1.2, "laststep": step == steps[-1]})
    weights = np.stack(weights)
    if nan_row is not None:
        weights[nan_row, 7] = np.nan
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "weights.npy", weights)
    with open(root / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "size", "shape"])
        for r in layout:
            w.writerow([r["varname"], r["start"], r["end"], r["size"], str(r["shape"])])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    with gzip.open(root / "metrics.csv.gz", "wt") as f:
        f.write(buf.getvalue())
    return weights, layout, rows


def test_small_cnn_zoo_import(tmp_path):
    src = tmp_path / "mnist"
    weights, layout, rows = _write_small_cnn_zoo(src, nan_row=5)
    out = tmp_path / "zoo"
    s = zoo.import_zoo("smallcnnzoo", src, out)
    z = zoo.Zoo.open(out)
    assert len(z.jobs()) == 3 and len(z) == 5  # row 5 (net 2, step 86) holds a NaN: skipped
    assert zoo.verify(out).ok
    for i, rec in enumerate(z.records):
        assert rec["arch"] == "small_cnn" and rec["dataset"] == "mnist"
        row = rows[[r["modeldir"] == rec["meta"]["modeldir"] and r["step"] == rec["step"]
                    for r in rows].index(True)]
        assert rec["metrics"]["test_acc"] == pytest.approx(row["test_accuracy"])
        assert rec["arch_kwargs"]["activation"] == row["config.activation"]
        assert rec["hparams"]["optimizer"] == "adam" and rec["hparams"]["l2reg"] == 1e-4
        assert rec["arch_kwargs"]["dropout"] == pytest.approx(row["config.dropout"])
    # the imported weights compute exactly what the TF-layout network computes
    x = np.random.default_rng(1).random((28, 28, 1))
    for i, rec in enumerate(z.records):
        flat = weights[rec["meta"]["rows"][z.where(job=rec["job"]).column("step").index(rec["step"])]]
        ref = _tf_forward(flat.astype(np.float64), layout, x, rec["arch_kwargs"]["activation"])
        with torch.no_grad():
            got = z.model(i)(torch.from_numpy(x).permute(2, 0, 1)[None].float())[0].numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # importing again resumes (nothing new) rather than duplicating
    assert zoo.import_zoo("smallcnnzoo", src, out)["imported"] == 0


def test_small_cnn_zoo_bad_input(tmp_path):
    src = tmp_path / "mnist"
    _write_small_cnn_zoo(src, n_nets=1)
    np.save(src / "weights.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PickleRefusedError, match="weights.npy: refusing to load"):
        zoo.import_zoo("smallcnnzoo", src, tmp_path / "z1")
    _write_small_cnn_zoo(src, n_nets=1)
    (src / "layout.csv").write_text("varname,start_idx,end_idx,size,shape\nsequential/dense/kernel:0,0,x,1,(1,)\n")
    with pytest.raises(zoo.ZooError, match="layout.csv:2: bad layout row"):
        zoo.import_zoo("smallcnnzoo", src, tmp_path / "z2")


# ---------------------------------------------------------------------- Model Zoos
def _write_trial(root: Path, name, seed, dropout=0.0, epochs=(0, 2), payload=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({
        "model::type": "CNN", "model::channels_in": 1, "model::nlin": "tanh",
        "model::dropout": dropout, "model::init_type": "kaiming_uniform", "optim::optimizer": "adam",
        "optim::lr": 3e-4, "optim::wd": 1e-4, "seed": seed, "training::batchsize": 32}))
    (d / "result.json").write_text("\n".join(json.dumps(
        {"training_iteration": e, "train_acc": 0.5 + e / 10, "test_acc": 0.4 + e / 10,
         "train_loss": 2.0 - e / 10, "test_loss": 2.1 - e / 10, "ggap": 0.1}) for e in (1, 2)) + "\n")
    sds = {}
    for e in epochs:
        torch.manual_seed(seed * 100 + e)
        sd = zoo.create("modelzoo_cnn", in_channels=1, variant="cnn", dropout=dropout).state_dict()
        (d / f"checkpoint_{e:06d}").mkdir()
        torch.save(payload if payload is not None else sd, d / f"checkpoint_{e:06d}" / "checkpoints")
        sds[e] = sd
    return sds


def test_model_zoos_import(tmp_path):
    src = tmp_path / "mnist_zoo"
    a = _write_trial(src, "NN_tune_trainable_a_00000", seed=1)
    b = _write_trial(src, "NN_tune_trainable_b_00001", seed=2, dropout=0.2)
    out = tmp_path / "zoo"
    zoo.import_zoo("modelzoos", src, out)
    z = zoo.Zoo.open(out)
    assert len(z) == 4 and z.steps == [0, 2]
    assert zoo.verify(out).ok
    for i, rec in enumerate(z.records):
        ref = (a if rec["index"] == 0 else b)[rec["step"]]
        got = z[i]
        assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
        assert rec["arch"] == "modelzoo_cnn" and rec["hparams"]["optim::lr"] == 3e-4
    rec2 = z.where(job="000001", step=2).records[0]
    assert rec2["metrics"]["test_acc"] == pytest.approx(0.6)
    assert rec2["arch_kwargs"]["dropout"] == 0.2
    assert z.where(step=0).records[0]["meta"]["steps_without_metrics"] == [0]


class Custom:  # something weights_only loading does not allow
    def __init__(self):
        self.w = torch.zeros(2)


def test_model_zoo_checkpoint_needing_pickle_is_refused(tmp_path):
    src = tmp_path / "zoo_src"
    _write_trial(src, "trial", seed=1, payload={"model": Custom()})
    with pytest.raises(PickleRefusedError) as e:
        zoo.import_zoo("modelzoos", src, tmp_path / "out")
    msg = str(e.value)
    assert "checkpoint_000000/checkpoints" in msg and "needs full pickle" in msg
    assert "save_file" in msg  # says how to convert
    with pytest.raises(PickleRefusedError):
        load_checkpoint_file(src / "trial" / "checkpoint_000000" / "checkpoints")


# ------------------------------------------------------------------------ INR sets
def _siren_sd(keys, seed, hidden=32):
    g = torch.Generator().manual_seed(seed)
    shapes = [(hidden, 2), (hidden,), (hidden, hidden), (hidden,), (1, hidden), (1,)]
    return {k: torch.randn(*s, generator=g) * 0.3 for k, s in zip(keys, shapes)}


DWS_KEYS = ["seq.0.weight", "seq.0.bias", "seq.1.weight", "seq.1.bias", "seq.2.weight", "seq.2.bias"]
NFN_KEYS = ["net.0.linear.weight", "net.0.linear.bias", "net.1.linear.weight", "net.1.linear.bias",
            "net.2.weight", "net.2.bias"]


def test_dwsnets_inr_import(tmp_path):
    src = tmp_path / "mnist-inrs"
    made = {}
    for i, (split, label) in enumerate([("training", 3), ("testing", 7), ("training", 0)]):
        p = src / f"mnist_png_{split}_{label}_{i}" / "checkpoints" / "model_final.pth"
        p.parent.mkdir(parents=True)
        sd = _siren_sd(DWS_KEYS, i)
        torch.save(sd, p)
        made[p.relative_to(src).as_posix()] = (sd, label, "train" if split == "training" else "test")
    out = tmp_path / "zoo"
    zoo.import_zoo("dwsnets", src, out)
    z = zoo.Zoo.open(out)
    assert len(z) == 3 and zoo.verify(out).ok
    x = torch.rand(10, 2) * 2 - 1
    for i, rec in enumerate(z.records):
        sd, label, split = made[rec["meta"]["source_file"]]
        assert rec["meta"]["label"] == label and rec["meta"]["split"] == split
        # DWSNets' INR: sin(30 (W x + b)) hidden layers, linear output + 0.5
        h = torch.sin(30 * (x @ sd["seq.0.weight"].T + sd["seq.0.bias"]))
        h = torch.sin(30 * (h @ sd["seq.1.weight"].T + sd["seq.1.bias"]))
        ref = h @ sd["seq.2.weight"].T + sd["seq.2.bias"] + 0.5
        with torch.no_grad():
            assert torch.allclose(z.model(i)(x), ref, atol=1e-5)
    assert sorted(z.column("label")) == [0, 3, 7]


def test_nfn_folder_per_class_import(tmp_path):
    src = tmp_path / "siren_mnist_wts"
    made = {}
    for label in (0, 1):
        for j in range(2):
            p = src / str(label) / f"inr_{j}.pth"
            p.parent.mkdir(parents=True, exist_ok=True)
            sd = _siren_sd(NFN_KEYS, 10 * label + j, hidden=16 if False else 32)
            torch.save(sd, p)
            made[p.relative_to(src).as_posix()] = sd
    out = tmp_path / "zoo"
    zoo.import_zoo("nfn", src, out)
    z = zoo.Zoo.open(out)
    assert len(z) == 4 and z.column("label") == [0, 0, 1, 1] and zoo.verify(out).ok
    for i, rec in enumerate(z.records):
        sd = made[rec["meta"]["source_file"]]
        got = z[i]
        assert torch.equal(got["layers.1.weight"], sd["net.1.linear.weight"])
        assert torch.equal(got["layers.2.bias"], sd["net.2.bias"])
        assert rec["arch_kwargs"]["out_offset"] == 0.0
    bad = tmp_path / "bad"
    (bad / "0").mkdir(parents=True)
    torch.save({"net.0.linear.weight": Custom()}, bad / "0" / "x.pth")
    with pytest.raises(PickleRefusedError, match="x.pth"):
        zoo.import_zoo("nfn", bad, tmp_path / "bad_out")
    odd = tmp_path / "odd"
    (odd / "0").mkdir(parents=True)
    torch.save({"encoder.weight": torch.zeros(2, 2)}, odd / "0" / "y.pth")
    with pytest.raises(zoo.ZooError, match="y.pth: key 'encoder.weight' is not a SIREN layer"):
        zoo.import_zoo("nfn", odd, tmp_path / "odd_out")


def test_safetensors_checkpoints_are_accepted(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "nfn"
    (src / "3").mkdir(parents=True)
    sd = _siren_sd(NFN_KEYS, 0)
    save_file(sd, str(src / "3" / "a.safetensors"))
    zoo.import_zoo("nfn", src, tmp_path / "out")
    z = zoo.Zoo.open(tmp_path / "out")
    assert z.column("label") == [3] and torch.equal(z[0]["layers.0.weight"], sd["net.0.linear.weight"])
