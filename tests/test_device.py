"""Training on a chosen device: ``--device`` / ``config.device`` for the metanetwork tasks,
``metanet predict`` and GHN meta-training. On a machine without a GPU the requests that
cannot be served are refused with a clear error; with a GPU the same runs on it follow
the CPU runs (same start, same batches: losses equal to float rounding) and save models
that load on the CPU."""
import json

import pytest
import torch

from metanet.cli import main
from tasks.classify_inr import INRConfig
from tasks.classify_inr import run as run_inr
from tasks.predict_accuracy import AccuracyConfig, run
from tasks.torchrun import pick_device
from zoo.build import build

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a GPU (torch.cuda.is_available() is False)")


def test_pick_device_names_and_refusals():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if HAS_GPU else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    with pytest.raises(ValueError, match="not supported for training"):
        pick_device("meta")
    if HAS_GPU:
        assert pick_device("cuda").type == "cuda"
        with pytest.raises(ValueError, match="does not exist"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match="sees no GPU.*--device cpu"):
            pick_device("cuda")


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("argv", [["train", "accuracy"], ["train", "inr"], ["train", "ghn"]])
def test_commands_refuse_a_gpu_the_machine_lacks(tmp_path, capsys, argv):
    out = tmp_path / "out"
    zoo = [] if argv[1] == "ghn" else ["--zoo", str(tmp_path / "no_zoo")]
    assert main([*argv, *zoo, "--out", str(out), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sees no GPU" in err and "Traceback" not in err
    assert not out.exists()   # refused before anything is written


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "mixed"
    build("mixed", 8, out, options={"steps": [1]}, progress=False)
    return out


def _losses(result):
    return [h["train_loss"] for h in result.history]


@gpu
@pytest.mark.parametrize("model", ["gmn", "gmn_hybrid", "ngt", "nfn", "statnn"])
def test_accuracy_training_on_the_gpu_follows_the_cpu(cnn_zoo, tmp_path, model):
    kw = dict(zoo=str(cnn_zoo), model=model, epochs=2, batch_size=8, hidden=8, layers=1, progress=False)
    cpu = run(AccuracyConfig(out=str(tmp_path / "cpu"), **kw))
    cuda = run(AccuracyConfig(out=str(tmp_path / "cuda"), device="cuda", **kw))
    assert _losses(cuda) == pytest.approx(_losses(cpu), rel=1e-3)
    # the model saved on the GPU loads and predicts on the CPU, as the CPU run's does
    for folder in ("cpu", "cuda"):
        assert main(["predict", "--model", str(tmp_path / folder / "best"), "--zoo", str(cnn_zoo),
                     "--limit", "4"]) == 0


@gpu
def test_mixed_architecture_batches_on_the_gpu(mixed_zoo, tmp_path):
    kw = dict(zoo=str(mixed_zoo), model="gmn", epochs=1, batch_size=4, hidden=8, layers=1, progress=False,
              preload=False)   # padded PyG batches of several architectures
    cpu = run(AccuracyConfig(out=str(tmp_path / "cpu"), **kw))
    cuda = run(AccuracyConfig(out=str(tmp_path / "cuda"), device="cuda", **kw))
    assert _losses(cuda) == pytest.approx(_losses(cpu), rel=1e-3)


@gpu
def test_predict_command_on_the_gpu_matches_the_cpu(cnn_zoo, tmp_path, capsys):
    run(AccuracyConfig(zoo=str(cnn_zoo), model="gmn", out=str(tmp_path), epochs=1, batch_size=8, hidden=8,
                       layers=1, progress=False))
    rows = {}
    for device in ("cpu", "cuda"):
        capsys.readouterr()
        assert main(["predict", "--model", str(tmp_path / "best"), "--zoo", str(cnn_zoo), "--device", device]) == 0
        rows[device] = [json.loads(line)["prediction"] for line in capsys.readouterr().out.splitlines()]
    assert len(rows["cpu"]) == 24 and rows["cuda"] == pytest.approx(rows["cpu"], rel=1e-4, abs=1e-5)


@gpu
def test_inr_classification_on_the_gpu(inr_zoo, tmp_path):
    kw = dict(zoo=str(inr_zoo), model="gmn", epochs=1, batch_size=8, hidden=8, layers=1, progress=False,
              readout_norm="batch")
    cpu = run_inr(INRConfig(out=str(tmp_path / "cpu"), **kw))
    cuda = run_inr(INRConfig(out=str(tmp_path / "cuda"), device="cuda", **kw))
    assert _losses(cuda) == pytest.approx(_losses(cpu), rel=1e-3)


@gpu
@pytest.mark.parametrize("decoder", ["tiled", "lowrank"])
def test_ghn_meta_training_on_the_gpu_follows_the_cpu(tmp_path, decoder):
    from metanet.hyper import GHN
    from tasks.predict_init import PredictInitConfig
    from tasks.predict_init import run as run_ghn

    opts = dict(block=8) if decoder == "tiled" else dict(max_width=64, rank=4)
    kw = dict(steps=4, meta_batch=2, batch_size=16, n_archs=3, val_archs=2, eval_every=2, ckpt_every=2,
              progress=False, ghn=dict(gnn="transformer", decoder=decoder, hid=16, layers=1, **opts))
    cpu = run_ghn(PredictInitConfig(out=str(tmp_path / "cpu"), **kw))
    cuda = run_ghn(PredictInitConfig(out=str(tmp_path / "cuda"), device="cuda", **kw))
    assert [h["loss"] for h in cuda.history] == pytest.approx([h["loss"] for h in cpu.history], rel=1e-3)
    # (the weights themselves drift apart at rounding level over Adam's steps: not compared)
    ghn = GHN.from_pretrained(cuda.best_dir)   # saved from the GPU, loads on the CPU
    assert all(p.device.type == "cpu" for p in ghn.parameters())
    from tasks.predict_init import build_arch, sample_archs

    model = build_arch(sample_archs("digits", [7])[0], seed=0)
    on_cpu = ghn.eval().predict(model)
    on_gpu = ghn.to("cuda").predict(model.to("cuda"))
    assert set(on_gpu) == set(on_cpu)
    for k, v in on_cpu.items():
        assert on_gpu[k].device.type == "cuda" and torch.allclose(on_gpu[k].cpu(), v, rtol=1e-4, atol=1e-5), k
