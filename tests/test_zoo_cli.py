"""The ``zoo`` command: through ``metanet`` and standalone (``python -m zoo``)."""
import json

import pytest

import zoo
from zoo.cli import main


def test_registered_in_metanet_cli():
    try:
        from metanet.cli import build_parser
        parser = build_parser()
    except ImportError as e:  # another subcommand module of metanet is not written yet
        pytest.skip(f"metanet.cli does not import yet: {e}")
    args = parser.parse_args(["zoo", "build", "--recipe", "digits_cnn", "--n", "3", "--out", "x",
                              "--workers", "2", "--executor", "sequential", "--seed", "4"])
    assert callable(args.func) and args.n == 3 and args.workers == 2 and args.seed == 4
    for argv in (["zoo", "verify", "d"], ["zoo", "info", "d"], ["zoo", "pull", "u/r"],
                 ["zoo", "push", "d", "u/r"], ["zoo", "import", "--format", "nfn", "s", "--out", "o"]):
        assert callable(parser.parse_args(argv).func)


def test_build_info_verify_via_cli(tmp_path, capsys):
    out = tmp_path / "z"
    rc = main(["build", "--recipe", "mnist1d_cnn", "--n", "2", "--out", str(out), "--epochs", "0,1",
               "--option", "sample=false", "--option", 'hparams={"batch_size": 200}', "--quiet"])
    assert rc == 0
    assert "2 trained" in capsys.readouterr().out
    z = zoo.Zoo.open(out)
    assert z.steps == [0, 1] and all(r["hparams"]["batch_size"] == 200 for r in z.records)
    assert all(r["hparams"]["optimizer"] == "adam" for r in z.records)  # reference hparams
    info = json.loads((out / "zoo.json").read_text())
    assert info["build"]["options"]["sample"] is False
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 networks, 4 checkpoints" in text and "conv1d x2" in text
    assert main(["verify", str(out), "--quiet"]) == 0
    assert main(["recipes"]) == 0
    assert "digits_siren" in capsys.readouterr().out


def test_cli_errors_exit_1_with_a_message(tmp_path, capsys):
    assert main(["build", "--recipe", "nope", "--n", "1", "--out", str(tmp_path / "a"), "--quiet"]) == 1
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    for extra, says in ((["--n", "0"], "at least 1"), (["--n", "1", "--options", "{bad"], "is not JSON"),
                        (["--n", "1", "--options", "[1]"], "must be a JSON object"),
                        (["--n", "1", "--epochs", "a,b"], "comma-separated integers")):
        assert main(["build", "--recipe", "digits_cnn", "--out", str(tmp_path / "c"), "--quiet"] + extra) == 1
        assert says in capsys.readouterr().err, extra
        assert not (tmp_path / "c").exists()   # refused before anything is written
    assert main(["info", str(tmp_path)]) == 1
    assert "zoo.json: missing" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), "--quiet"]) == 1
    assert main(["build", "--recipe", "mnist_cnn", "--n", "1", "--out", str(tmp_path / "b"),
                 "--data-root", str(tmp_path), "--quiet"]) == 1
    assert "MNIST/raw" in capsys.readouterr().err
