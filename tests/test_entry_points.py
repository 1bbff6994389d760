"""Every entry point checks its input and keeps what it is given: state dicts checked by
permute and scale like graph does, stacked batches with one permutation or scaling per
network, dtypes and PyTorch's ``_metadata`` kept, clear errors for the wrong kind of
argument, zoo indices and filters that say what is there, a bounded architecture cache,
Ctrl-C during a zoo build, and the packaging facts the README states."""
import gc
import importlib
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import weakref
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from metanet import Permutation, Scaling, StateDictError, WeightSpace
from metanet.space import weightspace as wsmod

ROOT = Path(__file__).resolve().parents[1]


def mlp(act=nn.ReLU, width=8):
    return nn.Sequential(nn.Linear(5, width), act(), nn.Linear(width, width), act(), nn.Linear(width, 3))


class Versioned(nn.Module):
    """A module whose state-dict format has a version it checks on load (as BatchNorm and
    some torchvision modules do)."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version") != 2:
            raise RuntimeError(f"Versioned needs a version-2 state dict, got {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def bn_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))


@pytest.fixture(scope="module")
def relu():
    m = mlp()
    return m, WeightSpace.of(m, (torch.randn(2, 5),))


@pytest.fixture(scope="module")
def tanh():
    m = mlp(nn.Tanh)
    return m, WeightSpace.of(m, (torch.randn(2, 5),))


def stack(sds):
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def assert_equal_dicts(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# -- permute and scale check the state dict ------------------------------------------------
@pytest.mark.parametrize("method", ["permute", "scale"])
def test_permute_and_scale_check_the_state_dict(relu, method):
    m, ws = relu
    sd = m.state_dict()
    arg = ws.identity_permutation() if method == "permute" else ws.sample_scaling()
    call = lambda d, **kw: getattr(ws, method)(d, arg, **kw)  # noqa: E731
    with pytest.raises(StateDictError, match=r"missing '0\.bias'"):
        call({k: v for k, v in sd.items() if k != "0.bias"})
    with pytest.raises(StateDictError, match="'head.weight', which this architecture does not have"):
        call({**sd, "head.weight": torch.zeros(3)})
    with pytest.raises(StateDictError, match=r"'2\.weight' has shape \(8, 7\), expected \(8, 8\)"):
        call({**sd, "2.weight": torch.zeros(8, 7)})
    with pytest.raises(StateDictError, match="is a list, expected a torch.Tensor"):
        call({**sd, "0.bias": [0.0] * 8})
    two = stack([sd, sd])
    with pytest.raises(StateDictError, match="stack of checkpoints, pass batched=True"):
        call(two)
    with pytest.raises(StateDictError, match=r"that is one checkpoint, stack checkpoints"):
        call(sd, batched=True)
    ragged = {**two, "4.bias": torch.zeros(3, 3)}
    with pytest.raises(StateDictError, match=r"ragged batch: '4\.bias' stacks 3 checkpoints, '0\.weight' stacks 2"):
        call(ragged, batched=True)


@pytest.mark.parametrize("method", ["permute", "scale", "graph", "graphs", "check"])
def test_a_module_or_a_list_is_not_a_state_dict(relu, method):
    m, ws = relu
    arg = {"permute": (ws.identity_permutation(),), "scale": (ws.sample_scaling(),)}.get(method, ())
    with pytest.raises(TypeError, match=rf"{method}\(\) takes .*got the module Sequential: pass model\.state_dict\(\)"):
        getattr(ws, method)(m, *arg)
    sds = [m.state_dict(), m.state_dict()]
    hint = r"torch\.stack" if method == "graphs" else "list of 2 items"
    with pytest.raises(TypeError, match=rf"{method}\(\) takes .*{hint}"):
        getattr(ws, method)(sds, *arg)
    g = ws.graph(m.state_dict())
    if method in ("permute", "scale"):
        with pytest.raises(TypeError, match=r"ws\.state_dict\(graph\) first"):
            getattr(ws, method)(g, *arg)


def test_graphs_of_a_list_of_state_dicts_says_how_to_stack(relu):
    m, ws = relu
    with pytest.raises(TypeError, match=r"graphs\(\) takes one stacked state dict \{name: Tensor\[B, \.\.\.\]\}, "
                                        r"got a list of 3 items"):
        ws.graphs([m.state_dict()] * 3)
    two = stack([m.state_dict()] * 2)
    with pytest.raises(StateDictError, match=r"ragged batch: '2\.bias' stacks 3 checkpoints"):
        ws.graphs({**two, "2.bias": torch.zeros(3, 8)})
    with pytest.raises(StateDictError, match="that is one checkpoint"):
        ws.graphs(m.state_dict())


def test_a_permutation_is_not_a_scaling_and_back(relu):
    m, ws = relu
    sd = m.state_dict()
    with pytest.raises(TypeError, match=r"scale\(\) takes a Scaling .*got a Permutation: apply it with ws\.permute"):
        ws.scale(sd, ws.sample_permutation())
    with pytest.raises(TypeError, match=r"permute\(\) takes a Permutation, got a Scaling \(scale\): .*ws\.scale"):
        ws.permute(sd, ws.sample_scaling())
    with pytest.raises(TypeError, match=r"permute\(\) takes a Permutation .*got dict"):
        ws.permute(sd, {0: torch.arange(8)})


def test_permutations_and_scalings_are_checked(relu):
    m, ws = relu
    sd = m.state_dict()
    p = ws.identity_permutation()
    with pytest.raises(ValueError, match=r"group 1 .* not a permutation of 0\.\.7"):
        ws.permute(sd, Permutation((p[0], torch.zeros(8, dtype=torch.long))))
    with pytest.raises(ValueError, match=r"group 0 .* has shape \(7,\), expected \[8\]"):
        ws.permute(sd, Permutation((torch.arange(7), p[1])))
    with pytest.raises(TypeError, match="dtype torch.float32, expected integers"):
        ws.permute(sd, Permutation((torch.arange(8.0), p[1])))
    with pytest.raises(ValueError, match="permutation has 1 groups, this space has 2"):
        ws.permute(sd, Permutation((p[0],)))
    with pytest.raises(ValueError, match="holds 2 networks .* pass a stacked state dict with batched=True"):
        ws.permute(sd, ws.sample_permutation(batch=2))
    with pytest.raises(ValueError, match="positive scaling needs finite factors > 0"):
        ws.scale(sd, Scaling({0: -torch.ones(8)}, "scale"))
    with pytest.raises(ValueError, match=r"scaling names group 5; this space has groups 0\.\.1"):
        ws.scale(sd, Scaling({5: torch.ones(8)}, "scale"))
    with pytest.raises(ValueError, match="has no sign symmetry"):
        ws.scale(sd, Scaling({0: torch.ones(8)}, "sign"))


# -- stacked batches: one permutation / scaling for all networks, or one per network -------
def test_batched_permute_one_per_network(relu):
    m, ws = relu
    sds = [mlp().state_dict() for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    perms = [ws.sample_permutation(g) for _ in sds]
    want = stack([ws.permute(sd, p) for sd, p in zip(sds, perms)])
    assert_equal_dicts(ws.permute(stack(sds), perms, batched=True), want)
    assert_equal_dicts(ws.permute(stack(sds), Permutation.stack(perms), batched=True), want)
    # one for all
    assert_equal_dicts(ws.permute(stack(sds), perms[1], batched=True),
                       stack([ws.permute(sd, perms[1]) for sd in sds]))
    # the permutations differ per network, so the rows do not all move alike
    moved = ws.permute(stack(sds), perms, batched=True)["0.weight"]
    assert not torch.equal(moved, ws.permute(stack(sds), perms[0], batched=True)["0.weight"])
    with pytest.raises(ValueError, match="2 Permutations for a stack of 3 networks"):
        ws.permute(stack(sds), perms[:2], batched=True)
    with pytest.raises(ValueError, match="holds 2 networks, the stacked state dict 3"):
        ws.permute(stack(sds), Permutation.stack(perms[:2]), batched=True)
    with pytest.raises(TypeError, match="needs a stacked state dict and batched=True"):
        ws.permute(sds[0], perms)


def test_batched_permute_of_grouped_convolutions_matches_one_by_one():
    # axes that carry a product of groups (channel groups x channels per group)
    m = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                      nn.ReLU(), nn.Conv2d(8, 3, 1))
    ws = WeightSpace.of(m, (torch.randn(1, 2, 6, 6),))
    sds = [m.state_dict()] + [{k: torch.randn_like(v) for k, v in m.state_dict().items()} for _ in range(2)]
    p = ws.sample_permutation(torch.Generator().manual_seed(1), batch=3)
    one = [Permutation(tuple(t[b] for t in p.perms)) for b in range(3)]
    assert_equal_dicts(ws.permute(stack(sds), p, batched=True),
                       stack([ws.permute(sd, q) for sd, q in zip(sds, one)]))
    # and the permuted network computes the same function
    x = torch.randn(2, 2, 6, 6)
    ref = m(x)
    m.load_state_dict(ws.permute(sds[0], one[0]))
    torch.testing.assert_close(m(x), ref)


def test_batched_scale_one_per_network(relu, tanh):
    for m, ws, sample in ((*relu, "sample_scaling"), (*tanh, "sample_sign_flip")):
        sds = [mlp().state_dict() for _ in range(3)]
        g = torch.Generator().manual_seed(0)
        scalings = [getattr(ws, sample)(g) for _ in sds]
        want = stack([ws.scale(sd, s) for sd, s in zip(sds, scalings)])
        assert_equal_dicts(ws.scale(stack(sds), scalings, batched=True), want)
        assert_equal_dicts(ws.scale(stack(sds), Scaling.stack(scalings), batched=True), want)
        assert_equal_dicts(ws.scale(stack(sds), scalings[2], batched=True),
                           stack([ws.scale(sd, scalings[2]) for sd in sds]))
        batch = getattr(ws, sample)(g, batch=3)
        assert all(f.shape == (3, 8) for f in batch.factors.values())


# -- dtypes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_permute_is_bit_exact_and_keeps_every_dtype(relu, dtype):
    m, ws = relu  # traced in float32: a state dict of another dtype keeps its own
    sd = {k: v.to(dtype) for k, v in m.state_dict().items()}
    p = ws.sample_permutation(torch.Generator().manual_seed(2))
    out = ws.permute(sd, p)
    assert {v.dtype for v in out.values()} == {dtype}
    assert_equal_dicts(ws.permute(out, p.inverse()), sd)
    stacked = stack([sd, {k: v * 2 for k, v in sd.items()}])
    out = ws.permute(stacked, [p, p.inverse()], batched=True)
    assert {v.dtype for v in out.values()} == {dtype}
    assert_equal_dicts(ws.permute(out, [p.inverse(), p], batched=True), stacked)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_scale_keeps_every_dtype_and_rounds_once(relu, tanh, dtype):
    m, ws = relu
    sd = {k: v.to(dtype) for k, v in m.state_dict().items()}
    s = ws.sample_scaling(torch.Generator().manual_seed(3))
    out = ws.scale(sd, s)
    assert {v.dtype for v in out.values()} == {dtype}
    # as exact as the dtype allows: the float64 result rounded once
    exact = ws.scale({k: v.double() for k, v in sd.items()}, s)
    assert_equal_dicts(out, {k: v.to(dtype) for k, v in exact.items()})
    with pytest.raises(StateDictError, match=r"'0\.weight' has dtype torch\.int32: scaling needs floating-point"):
        ws.scale({**sd, "0.weight": sd["0.weight"].to(torch.int32)}, s)
    # sign flips are exact in every dtype
    m, ws = tanh
    sd = {k: v.to(dtype) for k, v in m.state_dict().items()}
    f = ws.sample_sign_flip(torch.Generator().manual_seed(4))
    flipped = ws.scale(sd, f)
    assert not torch.equal(flipped["0.weight"], sd["0.weight"])
    assert_equal_dicts(ws.scale(flipped, f), sd)


# -- _metadata (module versions) -------------------------------------------------------------
def test_permute_and_scale_keep_module_versions_for_load_state_dict():
    m = Versioned()
    ws = WeightSpace.of(m, (torch.randn(2, 4),), cache=False)
    sd = m.state_dict()
    assert sd._metadata[""]["version"] == 2
    for out in (ws.permute(sd, ws.sample_permutation()), ws.scale(sd, ws.sample_scaling()),
                ws.permute(stack([sd, sd]), ws.sample_permutation(batch=2), batched=True)):
        assert out._metadata == sd._metadata
        if out["fc1.weight"].dim() == 2:
            Versioned().load_state_dict(out)
    # a plain dict (e.g. read from safetensors) gets the traced model's versions
    out = ws.permute(dict(sd), ws.sample_permutation())
    Versioned().load_state_dict(out)
    # the control: without them this module refuses to load
    with pytest.raises(RuntimeError, match="needs a version-2 state dict"):
        Versioned().load_state_dict(dict(out))


def test_batchnorm_state_dict_keeps_its_version():
    m = bn_cnn().eval()
    x = torch.randn(2, 1, 8, 8)
    m(x)
    ws = WeightSpace.of(m, (x,), cache=False)
    sd = m.state_dict()
    out = ws.permute(sd, ws.sample_permutation(torch.Generator().manual_seed(5)))
    assert out._metadata["1"]["version"] == sd._metadata["1"]["version"] == 2
    assert torch.equal(out["1.num_batches_tracked"], sd["1.num_batches_tracked"])
    m2 = bn_cnn().eval()
    m2.load_state_dict(out)
    torch.testing.assert_close(m2(x), m(x))


def test_with_metadata_helper():
    sd = Versioned().state_dict()
    out = wsmod._with_metadata({"a": torch.zeros(1)}, {}, sd)
    assert isinstance(out, OrderedDict) and out._metadata == sd._metadata
    out._metadata[""]["version"] = 1   # a copy: the source keeps its own
    assert sd._metadata[""]["version"] == 2
    assert not hasattr(wsmod._with_metadata({"a": torch.zeros(1)}, {}), "_metadata")


# -- the architecture cache ------------------------------------------------------------------
@pytest.fixture
def fresh_cache():
    wsmod.clear_cache()
    yield
    wsmod.clear_cache()


def test_layouts_are_let_go_when_no_graph_uses_them(fresh_cache):
    sizes = []
    for i in range(12):
        m = mlp(width=16 + i)
        ws = WeightSpace.of(m, (torch.randn(2, 5),))
        g = ws.graph(m.state_dict(), layout="param")
        sizes.append(wsmod._tensor_bytes(ws.layout("param")))
        del g, ws, m
    gc.collect()
    info = wsmod.cache_info()
    assert info["spaces"] == 12                        # traces and groups stay cached
    assert info["layouts"] <= wsmod.RECENT_LAYOUTS      # structure tensors do not
    assert 0 < info["layout_bytes"] <= wsmod.RECENT_LAYOUTS * max(sizes)


def _other_layouts(n):
    for i in range(n):
        other = mlp(width=20 + i)
        WeightSpace.of(other, (torch.randn(2, 5),)).graph(other.state_dict())


def test_graphs_hold_their_layout_and_nothing_else_does(fresh_cache):
    m = mlp(width=9)
    ws = WeightSpace.of(m, (torch.randn(2, 5),))
    sd = m.state_dict()
    g = ws.graph(sd)
    assert ws.layout() is ws.layout("compact", int(g.width))   # one layout, asked for either way
    lay = weakref.ref(ws.layout())
    _other_layouts(wsmod.RECENT_LAYOUTS + 1)
    gc.collect()
    assert lay() is not None          # g shares its structure tensors
    del g
    gc.collect()
    assert lay() is None
    # a graph that does not hold its layout (a copy, or one sent through pickle) still converts back
    g = ws.graph(sd, copy=True)
    g2 = pickle.loads(pickle.dumps(ws.graph(sd)))
    lay = weakref.ref(ws.layout())
    _other_layouts(wsmod.RECENT_LAYOUTS + 1)
    gc.collect()
    assert lay() is None
    assert_equal_dicts(ws.state_dict(g), sd)    # the layout is rebuilt on demand
    assert_equal_dicts(ws.state_dict(g2), sd)


def test_recent_layouts_are_bounded_by_bytes(fresh_cache, monkeypatch):
    monkeypatch.setattr(wsmod, "RECENT_LAYOUT_BYTES", 1)
    _other_layouts(3)
    gc.collect()
    assert wsmod.cache_info()["layouts"] == 1   # the most recent one stays, whatever its size


def test_cache_is_bounded_by_bytes(fresh_cache, monkeypatch):
    m = mlp(width=10)
    ws = WeightSpace.of(m, (torch.randn(2, 5),))
    one = wsmod.cache_info()["bytes"]
    monkeypatch.setattr(wsmod, "CACHE_BYTES", int(2.5 * one))
    for i in range(5):
        WeightSpace.of(mlp(width=11 + i), (torch.randn(2, 5),))
    info = wsmod.cache_info()
    assert info["bytes"] <= wsmod.CACHE_BYTES and info["spaces"] == 2
    last = mlp(width=15)
    assert WeightSpace.of(last, (torch.randn(2, 5),)) is WeightSpace.of(last, (torch.randn(2, 5),))
    assert WeightSpace.of(m, (torch.randn(2, 5),)) is not ws   # the oldest went first


RSS_SCRIPT = textwrap.dedent("""
    import gc, torch
    from torch import nn
    import metanet
    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    seen = []
    for i in range(8):
        w = 512 + 16 * i
        m = nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))
        ws = metanet.WeightSpace.of(m, (torch.randn(2, 64),))
        g = ws.graph(m.state_dict(), layout="param")
        del g, ws, m
        gc.collect()
        seen.append(rss_mb())
    print(seen[2], seen[-1])
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_stays_flat_over_many_architectures():
    # each of these param-layout graphs has ~300k edges (~15 MB of structure): a cache that
    # kept every layout grows by ~65 MB between the 3rd and the 8th architecture (measured
    # on the cache this replaced), this one by ~12 MB (allocator slack)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    after3, after8 = map(float, r.stdout.split())
    assert after8 - after3 < 30, (after3, after8)


# -- zoo entry points --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "z"
    zoo.build("digits_cnn", 3, out, seed=0, options={"steps": [0]}, progress=False)  # untrained: fast
    return zoo.Zoo.open(out)


def test_zoo_index_out_of_range_says_index_and_size(small_zoo):
    z = small_zoo
    with pytest.raises(IndexError, match=r"index 3 is out of range: this view holds 3 checkpoints "
                                         r"\(positions 0\.\.2\); 253 of the 256 indices"):
        z.graphs(range(256))
    for call in (lambda: z[3], lambda: z.stacked([0, 7]), lambda: z.subset([-4]), lambda: z.record(9),
                 lambda: z.model(3)):
        with pytest.raises(IndexError, match="out of range: this view holds 3 checkpoints"):
            call()
    with pytest.raises(TypeError, match="positions are integers"):
        z.stacked([0.5])
    assert torch.equal(z[-1]["fc.weight"], z[2]["fc.weight"])   # negative positions count from the end
    assert z.graphs([0, -1]).num_graphs == 2


def test_zoo_split_takes_one_fraction_per_part(small_zoo):
    with pytest.raises(TypeError, match=r"a sequence of fractions, one per part .* got the number 0\.5"):
        small_zoo.split(0.5)
    with pytest.raises(ValueError, match="one non-negative fraction per part"):
        small_zoo.split([0.5, -0.1])
    assert sum(len(p) for p in small_zoo.split([0.5, 0.5])) == len(small_zoo)


def test_wrong_example_inputs_are_one_trace_error_without_a_logged_traceback(caplog):
    """torch.export logs the failing op's traceback (at ERROR, to stderr outside pytest)
    before it raises; the TraceError says it in one line, so that log is held back."""
    import logging

    from metanet import TraceError

    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(TraceError, match="could not trace Sequential: RuntimeError: a and b must have same"):
            WeightSpace.of(m, (torch.randn(2, 3),), cache=False)
    assert not [r for r in caplog.records if r.name.startswith("torch._subclasses")]


def test_zoo_where_that_matches_nothing_says_what_is_there(small_zoo):
    z = small_zoo
    with pytest.raises(ValueError, match=r"where\(step=7\) matches none of the 3 checkpoints of this view; "
                                         r"step takes the values 0"):
        z.where(step=7)
    with pytest.raises(ValueError, match="no checkpoint of this view .* has a field 'epochs_trained'"):
        z.where(epochs_trained=1)
    job = z.records[0]["job"]
    with pytest.raises(ValueError, match="each condition matches some .* but no checkpoint matches all"):
        z.where(job=job, index=[1, 2])
    with pytest.raises(ValueError, match="the predicate matches none"):
        z.where(lambda r: False)
    assert len(z.where(step=0)) == 3 and len(z.where(job=job)) == 1


# -- Ctrl-C during a build ---------------------------------------------------------------------
def test_interrupted_build_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    zb = importlib.import_module("zoo.build")   # the module (zoo.build is also the function)

    class StopsAfterOne(zb.SequentialExecutor):
        def map(self, jobs):
            it = super().map(jobs)
            yield next(it)
            raise KeyboardInterrupt

    monkeypatch.setattr(zb, "make_executor", lambda *a, **k: StopsAfterOne())
    from metanet.cli import main

    out = tmp_path / "z"
    rc = main(["zoo", "build", "--recipe", "digits_cnn", "--n", "4", "--out", str(out), "--epochs", "0",
               "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130
    assert err == [f"interrupted: networks saved in {out}: 1 of 4; rerun the same command to resume"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_in_a_real_build(tmp_path):
    out = tmp_path / "z"
    cmd = [sys.executable, "-m", "zoo", "build", "--recipe", "digits_cnn", "--n", "200", "--out", str(out),
           "--epochs", "0,1", "--executor", "sequential"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # a child inherits an ignored SIGINT (exec keeps SIG_IGN), and Python then installs no
    # KeyboardInterrupt handler: start it as a shell starts a foreground job, with the default
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    jobs, deadline = out / "jobs", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if jobs.exists() and any(p.suffix == ".safetensors" for p in jobs.iterdir()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"interrupted: networks saved in {out}: ")


# -- help texts and packaging ------------------------------------------------------------------
def test_help_is_for_users(capsys):
    from metanet.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["zoo", "--help"])
    text = capsys.readouterr().out
    assert "metanet zoo build --recipe" in text and "resume" in text
    assert "register(subparsers)" not in text and "``" not in text
    description = build_parser().description
    assert "metanetwork" not in description   # nothing that does not exist yet


@pytest.mark.parametrize("bad, says", [(["--steps", "0"], "steps must be at least 1"),
                                       (["--meta-batch", "0"], "meta_batch must be at least 1")])
def test_train_ghn_refuses_bad_settings_with_a_line(tmp_path, capsys, bad, says):
    from metanet.cli import main

    assert main(["train", "ghn", "--out", str(tmp_path / "g"), "--quiet"] + bad) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "g").exists()   # nothing written


def test_pyproject_packages_exist_and_license_is_spdx():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    for pattern in meta["tool"]["setuptools"]["packages"]["find"]["include"]:
        pkg = ROOT / pattern.rstrip("*")
        assert (pkg / "__init__.py").exists(), f"pyproject includes {pattern}, which is not a package"


def test_graph_inverses_take_graphs(relu):
    m, ws = relu
    sd = m.state_dict()
    two = ws.graphs(stack([sd, sd]))
    with pytest.raises(TypeError, match=r"state_dict\(\) takes a parameter graph made by ws\.graph\(\), got a state dict"):
        ws.state_dict(sd)
    with pytest.raises(TypeError, match=r"state_dicts\(\) takes a parameter graph made by ws\.graphs\(\), got the module"):
        ws.state_dicts(m)
    with pytest.raises(TypeError, match=r"got a batch of 2: use state_dicts\(\)"):
        ws.state_dict(two)
    with pytest.raises(TypeError, match=r"node_index\(\) takes a Permutation, got a Scaling"):
        ws.node_index(ws.sample_scaling())
    assert_equal_dicts(ws.state_dicts(two), stack([sd, sd]))


def test_a_recipe_name_is_registered_once():
    r = zoo.get_recipe("digits_cnn")
    assert zoo.register_recipe(r) is r   # the same recipe again: nothing changes
    clone = zoo.Recipe(**{f: getattr(r, f) for f in r.__dataclass_fields__})
    with pytest.raises(ValueError, match="recipe 'digits_cnn' is already registered"):
        zoo.register_recipe(clone)
    assert zoo.get_recipe("digits_cnn") is r
