"""benchmarks/metanetworks.py's mixed-architecture section: margins against StatNN read only
between rows of one command, a row per family, the profile table, the fast layers named."""

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("metanetworks")


def _row(model, tau, seeds=3):
    return {"model": model, "tau": [tau, 0.01], "r2": [0.5, 0.1], "taus": [tau] * seeds, "r2s": [0.5] * seeds,
            "train_networks_per_s": [10.0, 1.0], "best_epochs": [3] * seeds, "seconds": 60.0}


def _run(models, fast=True):
    return {"command": f"python benchmarks/metanetworks.py --parts mixed --models {models}", "seeds": 3,
            "epochs": 3, "max_train": 600, "machine_load": 3.0, "models": models, "readout_norm": "batch",
            "gmn_fast": fast}


def _res(runs, rows, **extra):
    return {"mixed_zoo": "zoos/mixed", "mixed_networks": 500, "mixed_architectures": 498, "mixed": rows,
            "mixed_families": {"cnn": 40, "tiny_resnet": 260, "tiny_transformer": 200},
            "part_runs": {"mixed": runs}, "command": runs[-1]["command"], "machine": "test", "torch": "x",
            "nfn": False, "seeds": 3, "epochs": 3, "seconds": 1.0, **extra}


def _page(bench, res, tmp_path):
    path = tmp_path / "metanet_mixed.md"
    bench.write_markdown(res, path)
    return path.read_text()


def test_margin_within_one_command_and_verdict(bench, tmp_path):
    text = _page(bench, _res([_run("statnn,gmn")], [_row("statnn", 0.40), _row("gmn", 0.45)]), tmp_path)
    assert "GMN (fast=True) − StatNN: +0.050 τ" in text and "not met" in text
    text = _page(bench, _res([_run("statnn,gmn")], [_row("statnn", 0.40), _row("gmn", 0.49)]), tmp_path)
    assert "+0.090 τ" in text and ": met)" in text
    assert "40 cnn, 260 tiny_resnet, 200 tiny_transformer" in text


def test_no_margin_across_commands(bench, tmp_path):
    res = _res([_run("statnn,gmn"), _run("ngt")], [_row("statnn", 0.40), _row("gmn", 0.45), _row("ngt", 0.60)])
    text = _page(bench, res, tmp_path)
    assert "NGT: no command trained it beside StatNN" in text and "+0.200" not in text
    assert "+0.050" in text


def test_family_and_profile_tables(bench, tmp_path):
    profile = {"command": "cmd", "load": 2.5, "architectures": 498, "trace_s": 200.0,
               "batches": [{"networks": 64, "architectures": 60, "nodes": 10000, "edges": 400000, "width": 25,
                            "pad_fraction": 0.7}],
               "stack_s": 0.5, "graphs_s": 1.0, "datalist_s": 0.1, "collate_s": 0.4, "data_networks_per_s": 32.0,
               "networks": 64,
               "models": [{"model": "gmn", "train_networks_per_s": 2.3, "eval_networks_per_s": 9.0},
                          {"model": "gmn_fast", "train_networks_per_s": 3.7, "eval_networks_per_s": 12.0}]}
    res = _res([_run("statnn,gmn")], [_row("statnn", 0.40), _row("gmn", 0.45)],
               mixed_family_tau={"statnn": {"cnn": [0.1, 0.3], "tiny_resnet": [0.5, 0.5]},
                                 "gmn": {"cnn": [0.2, 0.2], "tiny_resnet": [0.6, 0.4]}},
               mixed_family_test_checkpoints={"cnn": 12, "tiny_resnet": 100}, mixed_profile=profile)
    text = _page(bench, res, tmp_path)
    assert "| StatNN | 0.200 ± 0.141 | 0.500 ± 0.000 |" in text
    assert "cnn (12 test checkpoints)" in text
    assert "| GMN, readout_norm='batch', fast=True (same parameters) | 3.70 | 12.00 |" in text
    assert "400,000 edges of width 25 (70% of the edge feature slots padding)" in text
