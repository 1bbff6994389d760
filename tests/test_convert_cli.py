"""``metanet convert`` and ``metanet.graph.plot.plot_graph``."""
from __future__ import annotations

import struct
import textwrap
import zlib

import pytest
import torch

from metanet import WeightSpace
from metanet.cli import main
from metanet.examples import EXAMPLES
from metanet.graph.plot import plot_graph

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path, min_side=200):
    """A PNG whose chunks all pass their CRC, with a real picture in it (not blank)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_side and height >= min_side
    # non-trivial: a blank image compresses to almost nothing
    assert len(data) > 20_000, f"suspiciously small PNG ({len(data)} bytes)"
    try:
        import matplotlib.image as mpimg
    except ImportError:  # pragma: no cover
        return
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0.05, "image is (nearly) uniform"


def test_convert_default_model(tmp_path, capsys):
    assert main(["convert", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert_valid_png(tmp_path / "graph.png")
    model, inputs = EXAMPLES["cnn"]()
    ws = WeightSpace.of(model, inputs)
    assert ws.groups, "the default example should have neuron groups"
    for g in ws.groups:  # every group is named, with its size
        assert f"group {g.id:2d}: {g.size:5d} neurons  {g.name}" in out
    assert "scale" in out                       # ReLU conv neurons admit positive scaling
    assert "conv 1" in out and "linear 1" in out  # op counts
    L = ws.layout("compact")
    assert f"{L.num_nodes:,} nodes, {L.num_edges:,} edges" in out
    assert "round trip" in out and "bit for bit" in out


def test_convert_param_layout_other_model(tmp_path, capsys):
    assert main(["convert", "--model", "mlp", "--layout", "param", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "param layout" in out and "edge width 1" in out
    assert (tmp_path / "d" / "graph.png").stat().st_size > 10_000


def test_convert_bad_model_name(tmp_path, capsys):
    assert main(["convert", "--model", "no_such_net", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_net" in err
    for name in EXAMPLES:  # says what would have worked
        assert name in err
    assert "module.path:factory" in err
    assert not (tmp_path / "graph.png").exists()


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:make", "cannot import module"),
    ("metanet.examples:no_such_factory", "has no attribute"),
    ("metanet.examples:DEFAULT_EXAMPLE", "not callable"),
])
def test_convert_bad_factory(tmp_path, capsys, spec, message):
    assert main(["convert", "--model", spec, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_convert_user_factory_file(tmp_path, capsys):
    src = tmp_path / "my_models.py"
    src.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), (torch.randn(1, 3),)

        def broken():
            return "not a model"
    """))
    assert main(["convert", "--model", f"{src}:make", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "sign flip" in out  # tanh neurons admit sign flips
    assert (tmp_path / "o" / "graph.png").exists()
    assert main(["convert", "--model", f"{src}:broken", "--out", str(tmp_path / "o")]) == 2
    assert "(model, example_inputs)" in capsys.readouterr().err


def test_plot_graph_with_concat_edges(tmp_path):
    model, inputs = EXAMPLES["densenet"]()
    ws = WeightSpace.of(model, inputs)
    L = ws.layout("compact")
    g = ws.graph(model.state_dict())
    n_struct = int((g.edge_type >= len(ws.weights)).sum())
    assert n_struct > 0, "a DenseNet graph must have concatenation edges"
    fig = plot_graph(ws, g, tmp_path / "dense.png")
    assert_valid_png(tmp_path / "dense.png")
    ax = fig.axes[0]
    title = ax.get_title()
    assert f"{L.num_nodes} nodes" in title and f"{n_struct} structural" in title
    assert any("concat" in t.get_text() for t in ax.get_legend().get_texts())
    assert any(t.get_text().startswith("cat(") for t in ax.texts)  # concatenated sets are labelled


def test_plot_graph_subsamples_and_batches(tmp_path):
    model, inputs = EXAMPLES["cnn"]()
    ws = WeightSpace.of(model, inputs)
    sd = model.state_dict()
    stacked = {k: torch.stack([v, -v]) for k, v in sd.items()}
    batch = ws.graphs(stacked, "param")
    fig = plot_graph(ws, batch, tmp_path / "b.png", max_edges=50)  # draws the first graph
    assert "the 50 strongest" in fig.axes[0].get_title()
    assert (tmp_path / "b.png").exists()
