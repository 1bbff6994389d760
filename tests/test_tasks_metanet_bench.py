"""benchmarks/metanetworks.py's bookkeeping: which command measured each row, margins read
only between rows of one command, the targets table, the INR zoo's build line."""
import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("metanetworks")


def _row(model, tau):
    return {"model": model, "tau": [tau, 0.01], "r2": [0.5, 0.1], "taus": [tau] * 3, "r2s": [0.5] * 3,
            "train_networks_per_s": [100.0, 1.0], "best_epochs": [4, 4, 4], "seconds": 1.0}


def _run(models=None):
    return {"command": f"python benchmarks/metanetworks.py --models {models}", "seeds": 3, "epochs": 4,
            "machine_load": 2.0, "models": models}


def test_run_of_is_the_last_command_that_trained_a_model(bench):
    runs = [_run(None), _run("gmn"), _run("statnn,gmn")]
    assert bench.run_of(runs, "gmn") == 2
    assert bench.run_of(runs, "ngt") == 0          # only the default-models command trained it
    assert bench.run_of([_run("gmn")], "ngt") is None


def _acc_res(runs, rows):
    return {"accuracy_zoo": "zoos/digits_cnn", "accuracy": rows, "part_runs": {"accuracy": runs},
            "command": runs[-1]["command"], "machine": "test", "torch": "x", "nfn": True, "seeds": 3, "epochs": 4}


def test_targets_read_margins_only_within_one_command(bench, monkeypatch):
    monkeypatch.setattr(bench, "_load_result", lambda name: None)
    # GMN from an earlier command than StatNN and the public NFN-HNP: no margin is read
    res = _acc_res([_run("gmn"), _run("statnn,nfn_public")],
                   [_row("gmn", 0.9), _row("statnn", 0.4), _row("nfn_public", 0.5)])
    text = "\n".join(bench.targets_section(res))
    assert "not measured" in text.split("\n")[6] and "+0.500" not in text
    # the same three in one command: margins and verdicts from the rows
    res = _acc_res([_run("statnn,nfn_public,gmn_rnorm")],
                   [_row("gmn_rnorm", 0.55), _row("statnn", 0.5), _row("nfn_public", 0.52)])
    line = [ln for ln in bench.targets_section(res) if ln.startswith("| accuracy")][0]
    assert "+0.050 over StatNN" in line and "+0.030 over public NFN-HNP" in line and line.endswith("| met |")
    res = _acc_res([_run("statnn,nfn_public,gmn_rnorm")],
                   [_row("gmn_rnorm", 0.51), _row("statnn", 0.5), _row("nfn_public", 0.52)])
    line = [ln for ln in bench.targets_section(res) if ln.startswith("| accuracy")][0]
    assert line.endswith("| not met |")


def test_targets_read_the_inr_pages(bench, monkeypatch):
    inr = {"inr_zoo": "zoos/shapes_siren", "part_runs": {"inr": [_run(None)]},
           "inr": [{"model": "gmn", "acc": [0.40, 0.01]}, {"model": "nfn", "acc": [0.39, 0.02]},
                   {"model": "gmn_canonical", "acc": [0.45, 0.01]}]}
    monkeypatch.setattr(bench, "_load_result", lambda name: inr if name == "metanet_inr_shapes" else None)
    lines = [ln for ln in bench.targets_section({"part_runs": {}}) if "shapes_siren" in ln]
    assert "+1.0 points" in lines[0] and lines[0].endswith("| not met |")
    assert "+5.0 points" in lines[1] and lines[1].endswith("| met |")


def test_zoo_build_line_names_options_off_the_recipe_defaults(bench, tmp_path):
    (tmp_path / "zoo.json").write_text(json.dumps({"build": {
        "n": 1000, "recipe": "shapes_siren", "seed": 0,
        "options": {"views": 1, "hidden": 32, "n_images": 1000, "sample": True, "data_root": None}}}))
    assert bench.zoo_build_line(tmp_path) == "metanet zoo build --recipe shapes_siren --n 1000 --options '{\"views\": 1}'"


def _tp(model, device, rate):
    return {"model": model, "device": device, "networks_per_s": rate, "peak_extra_mb": 10.0, "params": 1}


def test_throughput_on_a_gpu_is_judged_and_shown_per_device(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_load_result", lambda name: None)
    res = {"command": "python benchmarks/metanetworks.py --parts throughput --throughput-devices cpu,cuda",
           "machine": "test", "torch": "x", "nfn": True, "seeds": 3, "epochs": 4, "seconds": 1.0, "gpu": "GPU X",
           "part_runs": {"throughput": [{"command": "c", "machine_load": 1.0}]},
           "throughput": [_tp("gmn", "cpu", 40.0), _tp("gmn", "cuda", 400.0),
                          _tp("nfn_public", "cpu", 50.0), _tp("nfn_public", "cuda", 200.0)]}
    lines = [ln for ln in bench.targets_section(res) if ln.startswith("| training throughput")]
    assert len(lines) == 2
    assert "CPU" in lines[0] and "GMN 40, public NFN-HNP 50" in lines[0] and lines[0].endswith("| not met |")
    assert "GPU X" in lines[1] and "GMN 400, public NFN-HNP 200" in lines[1] and lines[1].endswith("| met |")
    bench.write_markdown(res, tmp_path / "page.md")
    page = (tmp_path / "page.md").read_text()
    assert "| GMN | GPU X | 400 | 10.0 |" in page and "| GMN | cpu | 40 | - |" in page
    # CPU-only runs keep the table without device columns
    res["throughput"] = [r for r in res["throughput"] if r["device"] == "cpu"]
    bench.write_markdown(res, tmp_path / "page.md")
    assert "| GMN | 40 | 10.0 | 1 |" in (tmp_path / "page.md").read_text()
