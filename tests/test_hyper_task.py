"""tasks.predict_init and the GHN commands: a tiny meta-training run writes safetensors
checkpoints, resumes to the same GHN as an uninterrupted run, and `metanet
predict-init` initialises a user's model from a file."""
import json

import pytest
import torch
from safetensors.torch import load_file

from metanet.cli import main
from metanet.hyper import GHN
from tasks.predict_init import PredictInitConfig, run, sample_archs

TINY = dict(steps=4, meta_batch=2, batch_size=16, n_archs=3, val_archs=2, eval_every=2,
            ckpt_every=2, progress=False, ghn=dict(gnn="gated", decoder="tiled", hid=16, layers=1, block=8))


def test_meta_training_writes_checkpoints_and_resumes_exactly(tmp_path):
    full = run(PredictInitConfig(out=str(tmp_path / "full"), **TINY))
    assert (tmp_path / "full/last/model.safetensors").exists()
    assert (tmp_path / "full/last/optimizer.safetensors").exists()
    assert (tmp_path / "full/best/config.json").exists()
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert [h["step"] for h in full.history] == [1, 2, 3, 4]
    assert 0.0 <= full.best_val_acc <= 1.0
    best = json.loads((tmp_path / "full/best/state.json").read_text())
    assert best["step"] == full.best_step

    cut = run(PredictInitConfig(out=str(tmp_path / "cut"), stop_at=2, **TINY))
    assert [h["step"] for h in cut.history] == [1, 2]
    resumed = run(PredictInitConfig(out=str(tmp_path / "cut"), **TINY))
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    a = load_file(tmp_path / "full/last/model.safetensors")
    b = load_file(tmp_path / "cut/last/model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history[-1]["loss"] == full.history[-1]["loss"]


def test_resume_refuses_another_config(tmp_path):
    run(PredictInitConfig(out=str(tmp_path), stop_at=1, **TINY))
    other = dict(TINY, ghn=dict(TINY["ghn"], hid=8))
    with pytest.raises(ValueError, match="no-resume"):
        run(PredictInitConfig(out=str(tmp_path), **other))
    # the same GHN on another schedule (learning rate, steps) does not resume silently either
    with pytest.raises(ValueError, match=r"lr 0\.003, now 0\.001.*no-resume"):
        run(PredictInitConfig(out=str(tmp_path), lr=1e-3, **TINY))
    with pytest.raises(ValueError, match="steps 4, now 6"):
        run(PredictInitConfig(out=str(tmp_path), **dict(TINY, steps=6)))
    # a state saved before the run's settings were recorded resumes as before
    st = tmp_path / "last" / "state.json"
    state = json.loads(st.read_text())
    assert state["run"]["lr"] == PredictInitConfig.lr
    del state["run"]
    st.write_text(json.dumps(state))
    assert [h["step"] for h in run(PredictInitConfig(out=str(tmp_path), lr=1e-3, **TINY)).history] == [1, 2, 3, 4]


def test_validation_architectures_are_not_training_ones():
    train = sample_archs("mnist1d", range(3))
    assert all(kw["ndim"] == 1 and kw["input_size"] == 40 for _, kw in train)
    with pytest.raises(ValueError, match="digits"):
        PredictInitConfig(dataset="cifar")


MODEL_FILE = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def example_input(self):
        return torch.zeros(2, 1, 8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

class NoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
'''


def test_predict_init_command(tmp_path, capsys):
    torch.manual_seed(0)
    ghn = GHN(hid=16, layers=1, block=8)
    ghn.save_pretrained(tmp_path / "ghn")
    (tmp_path / "mymodel.py").write_text(MODEL_FILE)
    out = tmp_path / "init.safetensors"
    rc = main(["predict-init", "--ghn", str(tmp_path / "ghn"), "--model", f"{tmp_path}/mymodel.py:Net",
               "--kwargs", '{"width": 12}', "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    sd = load_file(out)
    assert sd["conv.weight"].shape == (12, 1, 3, 3)
    import importlib.util
    spec = importlib.util.spec_from_file_location("mymodel_check", tmp_path / "mymodel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    expected = GHN.from_pretrained(tmp_path / "ghn").eval().predict(mod.Net(width=12))
    for k, v in expected.items():
        torch.testing.assert_close(sd[k], v.detach(), rtol=0, atol=0)
    assert "bn.running_var" in sd   # buffers are saved too (the model's own)

    rc = main(["predict-init", "--ghn", str(tmp_path / "ghn"), "--model", f"{tmp_path}/mymodel.py:NoInput",
               "--out", str(out)])
    assert rc == 2 and "--input-shape" in capsys.readouterr().err
    rc = main(["predict-init", "--ghn", str(tmp_path / "ghn"), "--model", f"{tmp_path}/mymodel.py:NoInput",
               "--input-shape", "2,4", "--out", str(out)])
    assert rc == 0 and load_file(out)["fc.weight"].shape == (2, 4)


def test_train_dispatcher_lists_kinds(capsys):
    assert main(["train"]) == 2
    assert "ghn" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    """DDP (gloo): two processes sharing each meta-batch train the same GHN as one."""
    import os
    import subprocess
    import sys

    args = ["train", "ghn", "--steps", "2", "--meta-batch", "2", "--batch-size", "16", "--n-archs", "3",
            "--val-archs", "1", "--eval-every", "2", "--ckpt-every", "2", "--gnn", "gated",
            "--hid", "16", "--layers", "1", "--block", "8", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-port", "29517", "-m", "metanet.cli", *args, "--out", str(tmp_path / "ddp")],
                   check=True, env=env, capture_output=True)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    a = load_file(tmp_path / "ddp/last/model.safetensors")
    b = load_file(tmp_path / "one/last/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_meta_training_takes_one_architecture_below_chance(tmp_path, monkeypatch):
    """With the default schedule, a GHN fitted to one CNN predicts parameters whose loss
    falls below chance (ln 10 = 2.30): the predicted parameters reach the forward pass and
    the task loss's gradient reaches the GHN."""
    import tasks.predict_init as pi

    cnn = ("cnn", dict(in_channels=1, n_classes=10, input_size=8, channels=[16, 16, 24],
                       kernel_size=[3, 1, 3], stride=[1, 1, 2], activation="relu", norm="layer",
                       pool="avg"))
    monkeypatch.setattr(pi, "sample_archs", lambda dataset, seeds: [cnn for _ in seeds])
    cfg = PredictInitConfig(out=str(tmp_path / "one"), steps=120, warmup=10, meta_batch=1, n_archs=1,
                            val_archs=1, eval_every=120, ckpt_every=120, progress=False,
                            ghn=dict(gnn="transformer", decoder="tiled", hid=64, layers=2, block=32))
    losses = [h["loss"] for h in run(cfg).history]
    assert sum(losses[-10:]) / 10 < 2.05, losses[-10:]


def test_loss_cap_bounds_an_exploding_architecture(tmp_path):
    cfg = PredictInitConfig(out=str(tmp_path / "cap"), steps=1, meta_batch=2, n_archs=2,
                            val_archs=1, loss_cap=0.5, progress=False,
                            ghn=dict(gnn="gated", decoder="tiled", hid=16, layers=1, block=8))
    # every architecture's loss exceeds the cap, so each counts as exactly the cap
    assert run(cfg).history[0]["loss"] == pytest.approx(0.5)


def test_predict_init_command_reads_a_saved_hugging_face_model(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16,
                                     architectures=["GPT2LMHeadModel"])
    config.save_pretrained(tmp_path / "saved")
    torch.manual_seed(0)
    GHN(hid=16, layers=1, block=8).save_pretrained(tmp_path / "ghn")
    out = tmp_path / "init.safetensors"
    rc = main(["predict-init", "--ghn", str(tmp_path / "ghn"), "--model", str(tmp_path / "saved"),
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    sd = load_file(out)
    model = transformers.GPT2LMHeadModel(config)
    expected = GHN.from_pretrained(tmp_path / "ghn").eval().predict(model, tuple(model.dummy_inputs.values()))
    assert len(expected) > 10
    tied = {"transformer.wte.weight": "lm_head.weight"}   # safetensors keeps one name of a tied pair
    for k, v in expected.items():
        torch.testing.assert_close(sd[k] if k in sd else sd[tied[k]], v.detach(), rtol=0, atol=0)

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["NoSuchModel"]}))
    rc = main(["predict-init", "--ghn", str(tmp_path / "ghn"), "--model", str(tmp_path / "bad"),
               "--out", str(out)])
    assert rc == 2 and "architectures" in capsys.readouterr().err


def test_shapes32_setting_samples_32x32_architectures(tmp_path):
    from tasks.predict_init import build_arch, load_data

    data = load_data("shapes32")
    assert data.input_shape == (1, 32, 32) and data.n_classes == 10
    for arch in sample_archs("shapes32", range(4)):
        assert arch[1]["input_size"] == 32
        assert build_arch(arch, seed=0)(data.x_train[:2]).shape == (2, 10)
    with pytest.raises(Exception, match="cifar10"):
        load_data("cifar10", str(tmp_path / "none"))


@pytest.mark.slow
def test_shapes32_meta_training_runs(tmp_path):
    res = run(PredictInitConfig(dataset="shapes32", out=str(tmp_path / "s32"), **TINY))
    assert [h["step"] for h in res.history] == [1, 2, 3, 4] and 0.0 <= res.best_val_acc <= 1.0


def test_step_hook_sees_every_step_and_leaves_the_run_unchanged(tmp_path):
    seen = []

    def hook(step, ghn):
        seen.append((step, ghn.training))
        ghn.eval()
        torch.randn(100)          # consumes global random state: must not change the run

    plain = run(PredictInitConfig(out=str(tmp_path / "plain"), **TINY))
    hooked = run(PredictInitConfig(out=str(tmp_path / "hooked"), **TINY), on_step=hook)
    assert seen == [(1, True), (2, True), (3, True), (4, True)]
    assert [h["loss"] for h in hooked.history] == [h["loss"] for h in plain.history]
    a = load_file(tmp_path / "plain/last/model.safetensors")
    b = load_file(tmp_path / "hooked/last/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_seeds_choose_the_training_architectures(tmp_path, monkeypatch):
    import tasks.predict_init as pi

    built = []
    real = pi.build_arch

    def spy(arch, seed=None):
        built.append(arch)
        return real(arch, seed)

    monkeypatch.setattr(pi, "build_arch", spy)
    seeds = (11, 23, 42)
    run(PredictInitConfig(out=str(tmp_path), **dict(TINY, val_archs=1, steps=6), train_seeds=seeds))
    wanted = sample_archs("digits", seeds)
    training = [a for a in built if a not in sample_archs("digits", [pi.VAL_SEED0])]
    assert training and all(a in wanted for a in training)
    assert not any(a in training for a in sample_archs("digits", range(3)) if a not in wanted)
    with pytest.raises(ValueError, match="n_archs"):
        PredictInitConfig(train_seeds=(1, 2), n_archs=3)
    with pytest.raises(ValueError, match="repeat"):
        PredictInitConfig(train_seeds=(1, 1, 2), n_archs=3)
