"""benchmarks/metanetworks.py's mixed-architecture section: margins against StatNN read only
between rows of one command, a row per family, the profile table, the fast layers named."""

import json

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


def test_model_epochs_parsed_and_checked(bench):
    assert bench.parse_model_epochs("statnn=24,gmn=4", ("statnn", "gmn")) == {"statnn": 24, "gmn": 4}
    assert bench.parse_model_epochs(None, ("statnn",)) == {}
    for bad, msg in [("statnn=0", "positive whole number"), ("statnn=2.5", "positive whole number"),
                     ("statnn", "MODEL=EPOCHS"), ("ngt=3", "not one of the mixed part's models"),
                     ("statnn=3,statnn=4", "given twice")]:
        with pytest.raises(SystemExit, match=msg):
            bench.parse_model_epochs(bad, ("statnn", "gmn"))
    with pytest.raises(SystemExit, match="mixed part only"):
        bench.main(["--parts", "accuracy", "--model-epochs", "statnn=3"])


class _FakeZoo:
    records = [{"job": j, "arch": a, "arch_kwargs": {}} for j, a in enumerate(["cnn", "tiny_resnet", "cnn"])]

    def __len__(self):
        return len(self.records)

    def record(self, i):
        return self.records[i]


def test_model_epochs_reach_each_model_and_its_row(bench, monkeypatch, tmp_path):
    """--model-epochs: each model trains for its own epochs (the others for --epochs), and
    its row and the command's record say so."""
    from tasks.predict_accuracy import Result

    import zoo

    calls = []

    def regress(zoo_path, model, seed, epochs, max_train, tag):
        calls.append((model, seed, epochs))
        return Result(epochs - 1, "", {}, {"tau": 0.1 * epochs, "r2": 0.0}, seconds=1.0, train_networks_per_s=5.0)

    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "_regress", regress)
    monkeypatch.setattr(bench, "mixed_families", lambda *a: ({"cnn": 2}, {"cnn": 0.5}))
    monkeypatch.setattr(zoo.Zoo, "open", staticmethod(lambda path: _FakeZoo()))
    (tmp_path / "mz").mkdir()
    (tmp_path / "benchmarks").mkdir()
    bench.main(["--parts", "mixed", "--models", "statnn,gmn", "--seeds", "2", "--epochs", "3",
                "--model-epochs", "statnn=7", "--mixed-zoo", str(tmp_path / "mz"), "--mixed-profile-batches", "0",
                "--name", "mixed_test"])
    assert calls == [("statnn", 0, 7), ("statnn", 1, 7), ("gmn", 0, 3), ("gmn", 1, 3)]
    res = json.loads((tmp_path / "benchmarks" / "results" / "mixed_test.json").read_text())
    rows = {r["model"]: r for r in res["mixed"]}
    assert rows["statnn"]["epochs"] == 7 and rows["gmn"]["epochs"] == 3
    assert rows["statnn"]["best_epochs"] == [6, 6]
    assert res["part_runs"]["mixed"][-1]["model_epochs"] == {"statnn": 7}
    text = (tmp_path / "benchmarks" / "mixed_test.md").read_text()
    assert "3 epochs (statnn 7 epochs)" in text
    assert "| StatNN | 0.700 ± 0.000 | 0.000 ± 0.000 | 2 | 5 | 7 | 6, 6 |" in text


def test_page_and_targets_with_epochs_per_model(bench, monkeypatch, tmp_path):
    run = {**_run("statnn,gmn"), "model_epochs": {"statnn": 24}}
    rows = [{**_row("statnn", 0.30), "epochs": 24, "best_epochs": [24, 20, 24]},
            {**_row("gmn", 0.40), "epochs": 3, "best_epochs": [2, 3, 1]}]
    res = _res([run], rows)
    text = _page(bench, res, tmp_path)
    assert "StatNN: the best validation epoch was the last (24) on 2 of 3 seed(s)" in text
    assert "GMN (fast=True): the best validation epoch was the last (3) on 1 of 3 seed(s)" in text
    # the targets row names each model's epochs; a StatNN-only control with fewer epochs is not shown
    control = {"epochs": 6, "command": "control", "mixed": [_row("statnn", 0.2)]}
    monkeypatch.setattr(bench, "_load_result",
                        lambda name: {"metanet_mixed": res, "metanet_mixed_statnn": control}.get(name))
    lines = [ln for ln in bench.targets_section({"part_runs": {}}) if ln.startswith("| mixed")]
    assert len(lines) == 1 and "GMN (fast=True) 3 epochs, StatNN 24 epochs" in lines[0] and "+0.100 over StatNN" in lines[0]
    assert lines[0].rstrip().endswith("at most 600 training checkpoints) |") and "| met in this run" in lines[0]
    # a control that trained StatNN longer than the same run did is still shown
    control["epochs"] = 30
    lines = [ln for ln in bench.targets_section({"part_runs": {}}) if ln.startswith("| mixed")]
    assert len(lines) == 2 and "StatNN trained longer (30 epochs" in lines[1]


def test_fewer_seeds_than_the_target_asks_are_named(bench, monkeypatch, tmp_path):
    one = [_row("statnn", 0.30, seeds=1), _row("gmn", 0.40, seeds=1)]
    text = _page(bench, _res([_run("statnn,gmn")], one), tmp_path)
    assert "target for GMN ≥ +0.08: met on 1 seed(s); the target asks for 3)" in text
    three = _res([_run("statnn,gmn")], [_row("statnn", 0.30), _row("gmn", 0.32)])
    full = _res([_run("statnn,gmn")], one)
    monkeypatch.setattr(bench, "_load_result", lambda name: {"metanet_mixed": three, "metanet_mixed_full": full}.get(name))
    lines = [ln for ln in bench.targets_section({"part_runs": {}}) if ln.startswith("| mixed")]
    assert "+0.020 over StatNN" in lines[0] and "| not met in this run" in lines[0] and "asks for 3" not in lines[0]
    assert lines[1].startswith("| mixed, every training checkpoint") and "+0.100 (1 seed(s)" in lines[1]
    assert lines[1].endswith("| met on 1 seed(s); the target asks for 3 |")


def test_time_section_sums_parts_and_names_what_was_not_measured(bench, monkeypatch):
    """The one command's time: each part's default models' seconds from the runs the pages
    read; a default model no run measured makes the total a lower bound."""
    acc = [{"model": m, "tau": [0.5, 0.0], "taus": [0.5] * 3, "seconds": 100.0}
           for m in ("statnn", "gmn", "nfn_public", "nfn", "ngt", "gmn_canonical")]
    res = {"accuracy": acc, "unseen": [{"model": "gmn", "seconds": 50.0}, {"model": "ngt", "seconds": 50.0}],
           "seeds": 3, "epochs": 4, "part_runs": {}}
    files = {"metanet_mixed_full": _res([_run("statnn,gmn")], [_row("statnn", 0.4), _row("gmn", 0.5)]),
             "metanet_inr": {"inr": [{"model": "gmn", "accs": [0.5] * 3, "seconds": 40.0}], "seeds": 3,
                             "epochs": 6}}
    monkeypatch.setattr(bench, "_load_result", lambda name: files.get(name))
    text = "\n".join(bench.time_section(res))
    assert "| accuracy | metanet.json | 3 | 4 | statnn, gmn, nfn_public, nfn, ngt, gmn_canonical | 600 | - |" in text
    assert "| mixed | metanet_mixed_full.json | 3 | 3 | statnn, gmn | 120 | ngt |" in text
    assert "statnn, nfn, nfn_public, gmn_canonical, ngt |" in text           # INR models not measured
    assert "14 min of training without" in text and "lower bound" in text and "met." not in text
    files["metanet_mixed_full"]["mixed"].append(_row("ngt", 0.5))
    files["metanet_inr"]["inr"] = [{"model": m, "accs": [0.5] * 3, "seconds": 10.0}
                                   for m in ("statnn", "nfn", "nfn_public", "gmn", "gmn_canonical", "ngt")]
    text = "\n".join(bench.time_section(res))
    assert "lower bound" not in text and "budget of about 45 min for the whole page: met." in text


def test_a_second_full_data_page_adds_its_own_rows(bench, monkeypatch, tmp_path):
    """Every page run on all training checkpoints (FULL_MIXED_PAGES) gets its own targets row,
    its margin read inside its own command; NGT's row says the target names GMN. The time
    section takes each default model from the first page that measured it."""
    gmn_page = _res([_run("statnn,gmn")], [_row("statnn", 0.40), _row("gmn", 0.46)])
    ngt_page = _res([_run("statnn,ngt", fast=False)], [{**_row("statnn", 0.41), "seconds": 999.0},
                                                       {**_row("ngt", 0.50), "seconds": 300.0}])
    capped = _res([_run("statnn,gmn")], [_row("statnn", 0.30), _row("gmn", 0.32)])
    files = {"metanet_mixed": capped, "metanet_mixed_full": gmn_page, "metanet_mixed_ngt": ngt_page}
    monkeypatch.setattr(bench, "_load_result", lambda name: files.get(name))
    lines = [ln for ln in bench.targets_section({"part_runs": {}}) if ln.startswith("| mixed, every")]
    assert len(lines) == 2
    assert "(metanet_mixed_full.md) |" in lines[0] and "+0.060" in lines[0] and lines[0].endswith("| not met |")
    assert "(metanet_mixed_ngt.md): NGT, the target names GMN" in lines[1] and "+0.090" in lines[1]
    assert lines[1].endswith("| met at its bar (not the target) |")
    text = "\n".join(bench.time_section({"part_runs": {}}))
    # StatNN from the first page (60 s), not the second's (999 s); NGT from the second
    assert "| mixed | metanet_mixed_full.json, metanet_mixed_ngt.json | 3 | 3 | statnn, gmn, ngt | 420 | - |" in text
    page = _page(bench, ngt_page, tmp_path)
    assert "NGT − StatNN: +0.090 τ (3 seed(s), the same command; the target names GMN; NGT at its bar of +0.08: met)" \
        in page
