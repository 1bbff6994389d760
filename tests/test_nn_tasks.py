"""The metanetwork tasks end to end on tiny zoos: accuracy prediction and INR
classification, their outputs, the best checkpoint, and `metanet train` / `predict`."""
import json

import pytest
import torch

from metanet.cli import main
from tasks.classify_inr import INRConfig
from tasks.classify_inr import run as run_inr
from tasks.predict_accuracy import AccuracyConfig, kendall_tau, load_model, predict, r2_score, run, zoo_batches
from zoo import Zoo


def test_metrics_against_hand_computed_values():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert r2_score([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.0)


@pytest.mark.parametrize("model", ["gmn", "gmn_hybrid"])
def test_predict_accuracy_runs_and_keeps_the_best(cnn_zoo, tmp_path, model):
    cfg = AccuracyConfig(zoo=str(cnn_zoo), model=model, out=str(tmp_path / model), epochs=2, batch_size=8,
                         hidden=8, layers=1, progress=False)
    result = run(cfg)
    rows = [json.loads(line) for line in (tmp_path / model / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_tau" in r for r in rows)
    best = max(range(2), key=lambda i: rows[i]["val_tau"])
    assert result.best_epoch == best + 1
    for name in ("best/model.safetensors", "best/config.json", "best/task.json", "learning_curves.png",
                 "predicted_vs_true.png", "result.json"):
        assert (tmp_path / model / name).exists(), name
    # the saved best model reproduces its validation score
    loaded, meta = load_model(result.best_dir)
    _, _, test = Zoo.open(cnn_zoo).split(list(cfg.split), seed=cfg.split_seed)
    pred, y = predict(loaded, zoo_batches(test, 8, target="test_acc"))
    assert kendall_tau(pred, y) == pytest.approx(result.test["tau"], nan_ok=True)


def test_classify_inr_with_nfn(inr_zoo, tmp_path):
    result = run_inr(INRConfig(zoo=str(inr_zoo), model="nfn", out=str(tmp_path / "inr"), epochs=1,
                               batch_size=8, hidden=8, layers=1, progress=False))
    assert 0.0 <= result.test["acc"] <= 1.0
    assert (tmp_path / "inr" / "confusion.png").exists()


def test_classify_inr_with_the_readout_norm(inr_zoo, tmp_path):
    """INRConfig.readout_norm reaches the GMN it builds and its saved best model; the
    models without that readout refuse it."""
    from metanet.nn.base import ReadoutNorm
    from tasks.predict_accuracy import build_model

    result = run_inr(INRConfig(zoo=str(inr_zoo), model="gmn", out=str(tmp_path / "inr"), epochs=1, batch_size=8,
                               hidden=8, layers=1, progress=False, readout_norm="batch"))
    loaded, meta = load_model(result.best_dir)
    assert isinstance(loaded.readout_norm, ReadoutNorm) and meta["config"]["readout_norm"] == "batch"
    assert loaded.readout_norm.num_batches_tracked.item() > 0   # running statistics were saved
    with pytest.raises(ValueError, match="readout_norm is an option of gmn"):
        build_model("nfn", Zoo.open(inr_zoo), layout="compact", hidden=8, layers=1, out_dim=10,
                    readout_norm="batch")


def test_train_and_predict_commands(cnn_zoo, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "accuracy", "--zoo", str(cnn_zoo), "--model", "nfn", "--out", str(out),
                 "--epochs", "1", "--batch-size", "8", "--hidden", "8", "--layers", "1", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["best_epoch"] == 1 and "tau" in report["test"]
    assert main(["predict", "--model", str(out / "best"), "--zoo", str(cnn_zoo), "--limit", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and all(isinstance(r["prediction"], float) for r in lines)
    z = Zoo.open(cnn_zoo)
    loaded, _ = load_model(out / "best")
    with torch.no_grad():
        expect = loaded(next(zoo_batches(z.subset(range(5)), 5))[0]).squeeze(-1)
    torch.testing.assert_close(torch.tensor([r["prediction"] for r in lines]), expect)


def test_train_commands_refuse_a_zoo_of_the_other_kind(cnn_zoo, inr_zoo, tmp_path, capsys):
    """An INR zoo given to `train accuracy` (or a classifier zoo to `train inr`), or a folder
    that is no zoo: one line naming the problem and the right command, exit code 2."""
    for kind, zoo, says in (("accuracy", inr_zoo, "metanet train inr"), ("inr", cnn_zoo, "metanet train accuracy"),
                            ("accuracy", tmp_path, "not a zoo folder")):
        assert main(["train", kind, "--zoo", str(zoo), "--out", str(tmp_path / kind), "--epochs", "1",
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


def test_predict_command_on_one_checkpoint_file(cnn_zoo, tmp_path, capsys):
    """`metanet predict --checkpoint FILE --arch NAME` gives the prediction the zoo path
    gives for the same checkpoint, from safetensors, a plain .pt and a wrapped .pt."""
    from safetensors.torch import save_file

    out = tmp_path / "cli"
    assert main(["train", "accuracy", "--zoo", str(cnn_zoo), "--model", "statnn", "--out", str(out),
                 "--epochs", "1", "--batch-size", "8", "--hidden", "8", "--quiet"]) == 0
    capsys.readouterr()
    z = Zoo.open(cnn_zoo)
    assert main(["predict", "--model", str(out / "best"), "--zoo", str(cnn_zoo), "--limit", "6"]) == 0
    by_zoo = [json.loads(line)["prediction"] for line in capsys.readouterr().out.splitlines()]
    assert len(set(by_zoo)) > 1   # the checkpoints get different predictions: a wrong one shows
    for i in (1, 4):
        rec, sd = z.record(i), z.state_dict(i)
        files = {"sd.safetensors": None, "sd.pt": sd, "wrapped.pt": {"state_dict": sd}}
        save_file(sd, tmp_path / "sd.safetensors")
        for name, obj in files.items():
            if obj is not None:
                torch.save(obj, tmp_path / name)
            assert main(["predict", "--model", str(out / "best"), "--checkpoint", str(tmp_path / name),
                         "--arch", rec["arch"], "--arch-kwargs", json.dumps(rec["arch_kwargs"])]) == 0
            got = json.loads(capsys.readouterr().out)
            assert got["prediction"] == pytest.approx(by_zoo[i], rel=1e-5, abs=1e-6), (i, name)
    with pytest.raises(SystemExit, match="--arch"):
        main(["predict", "--model", str(out / "best"), "--checkpoint", str(tmp_path / "sd.pt")])
    # bad input: exit code 2 and one line that names what is wrong
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    torch.save({k: v[..., :1] for k, v in z.state_dict(1).items()}, tmp_path / "cut.pt")
    rec = z.record(1)
    good = ["--arch", rec["arch"], "--arch-kwargs", json.dumps(rec["arch_kwargs"])]
    for argv, says in (
            (["--model", str(tmp_path), "--zoo", str(cnn_zoo)], "no task.json"),
            (["--model", str(out), "--zoo", str(cnn_zoo)], "its best/ subfolder"),
            (["--model", str(tmp_path / "none"), "--zoo", str(cnn_zoo)], "no such folder"),
            (["--model", str(out / "best"), "--zoo", str(tmp_path)], str(tmp_path)),
            (["--model", str(out / "best"), "--checkpoint", str(tmp_path / "sd.pt"), "--arch", "nope"],
             "not a zoo architecture"),
            (["--model", str(out / "best"), "--checkpoint", str(tmp_path / "sd.pt"), "--arch", rec["arch"],
              "--arch-kwargs", "{width: 3"], "is not JSON"),
            (["--model", str(out / "best"), "--checkpoint", str(tmp_path / "sd.pt"), "--arch", rec["arch"],
              "--arch-kwargs", '{"no_such_option": 3}'], "do not fit"),
            (["--model", str(out / "best"), "--checkpoint", str(tmp_path / "missing.pt")] + good, "no such file"),
            (["--model", str(out / "best"), "--checkpoint", str(tmp_path / "junk.safetensors")] + good,
             "unreadable safetensors"),
            (["--model", str(out / "best"), "--checkpoint", str(tmp_path / "cut.pt")] + good, "shape")):
        assert main(["predict"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (argv, err)


def test_train_commands_on_imported_public_zoos(tmp_path, capsys):
    """The README's path for the real Small CNN Zoo and DWSNets INRs: import, then train
    (files written here in the public formats; imported INRs carry no "image" field, so
    the INR split falls back to one network per part)."""
    from test_zoo_importers import DWS_KEYS, _siren_sd, _write_small_cnn_zoo

    _write_small_cnn_zoo(tmp_path / "mnist", n_nets=10, steps=(0, 86))
    for i in range(30):
        p = tmp_path / "mnist-inrs" / f"mnist_png_training_{i % 10}_{i}" / "checkpoints" / "model_final.pth"
        p.parent.mkdir(parents=True)
        torch.save(_siren_sd(DWS_KEYS, i), p)
    for fmt, src, kind, model in [("smallcnnzoo", "mnist", "accuracy", "statnn"),
                                  ("dwsnets", "mnist-inrs", "inr", "nfn")]:
        z = tmp_path / f"zoo_{fmt}"
        assert main(["zoo", "import", "--format", fmt, str(tmp_path / src), "--out", str(z), "--quiet"]) == 0
        assert main(["train", kind, "--zoo", str(z), "--model", model, "--out", str(tmp_path / kind),
                     "--epochs", "1", "--batch-size", "8", "--hidden", "8", "--layers", "1", "--quiet"]) == 0
        capsys.readouterr()
        result = json.loads((tmp_path / kind / "result.json").read_text())
        assert ("tau" if kind == "accuracy" else "acc") in result["test"]


def test_batches_never_mix_symmetries(cnn_zoo):
    """ReLU and tanh CNNs share one parameter graph but not their groups (scalings
    against sign flips): every batch's WeightSpace must be each of its networks' own,
    or the scale/sign-aware GMN and augmentations would apply one activation's
    symmetries to the other's networks."""
    from tasks.predict_accuracy import Preloaded

    zoo = Zoo.open(cnn_zoo)
    acts = {zoo.record(i)["arch_kwargs"]["activation"] for i in range(len(zoo))}
    assert acts == {"relu", "tanh"}   # the fixture holds both (else the test proves nothing)

    def flags(ws):
        return sorted((g.size, g.scaling, g.sign) for g in ws.groups)

    pre = Preloaded(zoo, "compact", "test_acc", None)
    assert len(pre) == len(zoo) and len(pre.parts) == 2
    seen = 0
    for ws, stacked, y in pre.parts:   # each part's networks are exactly those with its groups
        members = [i for i in range(len(zoo)) if flags(zoo.weight_space(i)) == flags(ws)]
        assert len(y) == len(members) and all(len(v) == len(y) for v in stacked.values())
        assert torch.equal(y, zoo.targets("test_acc")[members])
        seen += len(y)
    assert seen == len(zoo)
    plan = pre.plan(5, shuffle=True, seed=3)
    assert sum(1 for _ in pre.batches(5, shuffle=True, seed=3)) == len(plan)
    assert sorted(len(idx) for _, idx in plan) == sorted(
        min(5, len(y) - a) for _, _, y in pre.parts for a in range(0, len(y), 5))
    # streamed: one batch of the whole zoo cannot be one SharedBatch (it would carry one WeightSpace)
    (graphs, _), = zoo_batches(zoo, len(zoo), target="test_acc")
    assert not hasattr(graphs, "ws") and graphs.num_graphs == len(zoo)


def test_one_process_weights_every_batch_by_one(cnn_zoo, tmp_path):
    """fit() weights each process's loss by its share of the global batch; in one process
    every share is the whole batch, also when batches of separate structures (ReLU and
    tanh CNNs) make the batch sizes uneven. The gradient reaching the loss is the weight."""
    from tasks.predict_accuracy import fit, _regression_scores

    weights = []

    def loss_fn(pred, y):
        out = ((pred.squeeze(-1) - y) ** 2).mean()
        out.register_hook(lambda g: weights.append(float(g)))
        return out

    cfg = AccuracyConfig(zoo=str(cnn_zoo), model="statnn", out=str(tmp_path), epochs=2, batch_size=5,
                         hidden=8, layers=1, progress=False)
    fit(cfg, out_dim=1, loss_fn=loss_fn, scores_fn=_regression_scores, key="tau")
    assert len(weights) > 4 and weights == [1.0] * len(weights)
