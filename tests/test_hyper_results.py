"""benchmarks/hyper.py stores its results compactly: rounded floats, per-architecture
facts once, and a page rewritten from the stored JSON reads as before."""
import json
from pathlib import Path

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


def bench():
    return load_benchmark("hyper")


def test_compact_rounds_and_stores_architectures_once(tmp_path):
    h = bench()
    curve = [[0, 0.1], [5, 1 / 3], [10, 2 / 3]]
    res = {"trained": [{"dataset": "digits", "epochs": 3, "steps_per_epoch": 5, "trained_acc": 2 / 3,
                        "rows": [{"arch": "cnn", "kwargs": {"channels": [4]}, "kaiming": curve}]}],
           "predict_init": [{"dataset": "digits", "ratio": 1 / 7,
                             "rows": [{"arch": "cnn", "trained": 2 / 3, "tiled": curve}]}]}
    h.save_json(res, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["trained"][0]["rows"][0]["kaiming"] == [[0, 0.1], [5, 0.3333], [10, 0.6667]]
    assert back["trained"][0]["rows"][0]["arch"] == "cnn"
    assert back["predict_init"][0]["rows"][0] == {"tiled": [[0, 0.1], [5, 0.3333], [10, 0.6667]]}
    assert back["predict_init"][0]["ratio"] == float(f"{1 / 7:.7g}")
    # two thirds of 15 steps = step 10, from the unrounded curve
    assert back["trained"][0]["acc_two_thirds"] == float(f"{2 / 3:.7g}")
    assert "arch" in res["predict_init"][0]["rows"][0]          # the caller's dict is untouched
    h.save_json(back, tmp_path / "again.json")                    # idempotent
    assert (tmp_path / "again.json").read_text() == (tmp_path / "r.json").read_text()


def test_stored_results_rewrite_the_page_as_committed(tmp_path):
    h = bench()
    res = json.loads((ROOT / "benchmarks" / "results" / "hyper.json").read_text())
    h.write_md(res, tmp_path / "hyper.md", res["command"])
    assert (tmp_path / "hyper.md").read_text() == (ROOT / "benchmarks" / "hyper.md").read_text()


def test_main_table_entries_merge_by_decoder_and_the_page_says_which_seeds():
    h = bench()
    base = {"dataset": "digits", "seed": 0, "n_test": 2, "n_finetune": 1, "steps_per_epoch": 5,
            "trained_acc": 0.8, "kaiming_acc0": 0.1, "trained_acc_ft": 0.9, "kaiming_acc_1ep": 0.3,
            "kaiming_steps95": 20.0, "kaiming_reached95": 1}

    def entry(dec, seed, acc0):
        return dict(base, seed=seed, rows=[{"finetuned": True, dec: [[0, acc0]]}, {"finetuned": False, dec: [[0, acc0]]}],
                    ghn={dec: {"ghn_params": 10, "meta_train_seconds": 1.0, "final_loss": 2.0, "command": f"run {dec}"}},
                    decoders_run=[dec], **{f"{dec}_acc0": acc0, f"{dec}_ratio_to_trained": acc0 / 0.8,
                                           f"{dec}_acc_1ep": 0.5, f"{dec}_steps95": 10.0,
                                           f"{dec}_steps95_ratio": 0.5, f"{dec}_reached95": 1})

    e = entry("tiled", 0, 0.4)
    h.merge_entry(e, entry("lowrank", 0, 0.2))
    assert e["tiled_acc0"] == 0.4 and e["lowrank_acc0"] == 0.2
    assert set(e["ghn"]) == {"tiled", "lowrank"} and e["decoders_run"] == ["lowrank", "tiled"]
    assert e["rows"][0]["tiled"] == [[0, 0.4]] and e["rows"][0]["lowrank"] == [[0, 0.2]]
    res = {"config": dict(h.FULL), "datasets": ["digits"], "command": "run lowrank",
           "predict_init": [e, entry("tiled", 1, 0.6)]}
    page = "\n".join(h.predict_md(res))
    assert "**lowrank decoder: 1 of 3 seeds measured**" in page
    assert "| GHN, tiled decoder | 0,1 | 0.500 ± 0.100 |" in page
    assert "| digits | tiled | 2 | 0.625 | no |" in page
    assert "digits tiled seed 0, digits tiled seed 1: `run tiled`" in page


def test_drop_removes_superseded_parts_only():
    h = bench()
    res = {"curve": {"steps": 1}, "sources": {"curve": "a", "ratio_curve": "b"},
           "ratio_curve": [{"dataset": "digits", "decoder": "tiled"}, {"dataset": "mnist1d", "decoder": "tiled"}]}
    h.drop_parts(res, ["curve", "ratio_curve:mnist1d:tiled"])
    assert "curve" not in res and res["ratio_curve"] == [{"dataset": "digits", "decoder": "tiled"}]
    h.drop_parts(res, ["ratio_curve:digits:tiled"])
    assert "ratio_curve" not in res and res["sources"] == {}
    try:
        h.drop_parts(res, ["ratio"])
    except SystemExit as err:
        assert "ratio" in str(err)
    else:
        raise AssertionError("an unknown part must be refused")


def test_each_decoder_keeps_its_results_while_its_own_setup_is_unchanged():
    """--keep: a decoder's results stay when its setup equals this run's for that decoder,
    whatever the other decoders' setups; entries stored with one setup for all decoders
    (before session 8) are split per decoder."""
    import copy

    h = bench()
    common = {k: h.FULL[k] for k in ("ghn_steps", "meta_batch", "ghn_lr", "n_archs", "test_exclude", "n_test",
                                     "n_finetune")}
    old_setup = dict(common, ghn=h.GHN_KW, ghn_extra={},
                     decoders={"tiled": h.DECODERS["tiled"],
                               "lowrank": {"decoder": "lowrank", "max_width": 64, "rank": 16}})   # cp, no core key
    e = {"dataset": "digits", "seed": 0, "trained_acc": 0.8, "decoders_run": ["lowrank", "tiled"], "setup": old_setup,
         "tiled_acc0": 0.4, "lowrank_acc0": 0.2, "ghn": {"tiled": {"command": "a"}, "lowrank": {"command": "b"}},
         "rows": [{"finetuned": True, "tiled": [[0, 0.4]], "tiled_unpredicted": 0, "lowrank": [[0, 0.2]],
                   "lowrank_unpredicted": 0}]}
    other = dict(copy.deepcopy(e), seed=1, setup=dict(old_setup, ghn_steps=200))
    before = copy.deepcopy([e, other])
    kept = h.kept_entries([e, other], h.FULL, {})
    assert [e, other] == before                                    # the old results are not modified
    assert len(kept) == 1 and kept[0]["seed"] == 0 and kept[0]["decoders_run"] == ["tiled"]
    k = kept[0]
    assert k["tiled_acc0"] == 0.4 and k["ghn"] == {"tiled": {"command": "a"}} and "lowrank_acc0" not in k
    assert k["rows"] == [{"finetuned": True, "tiled": [[0, 0.4]], "tiled_unpredicted": 0}]
    assert k["setups"] == {"tiled": h.setup_of(h.FULL, {}, "tiled")} and "setup" not in k
    # stored per decoder, the entry is kept as it is; another GHN option drops every decoder
    assert h.kept_entries(kept, h.FULL, {}) == kept
    assert h.kept_entries(kept, h.FULL, {"identity": 0.9}) == []
    # a new low-rank run merges into it without touching the tiled part
    new = {"dataset": "digits", "seed": 0, "trained_acc": 0.8, "decoders_run": ["lowrank"], "command": "c",
           "setups": {"lowrank": h.setup_of(h.FULL, {}, "lowrank")}, "lowrank_acc0": 0.3,
           "ghn": {"lowrank": {"command": "c"}}, "rows": [{"lowrank": [[0, 0.3]], "lowrank_unpredicted": 0}]}
    h.merge_entry(k, new)
    assert k["tiled_acc0"] == 0.4 and k["lowrank_acc0"] == 0.3 and set(k["setups"]) == {"tiled", "lowrank"}
    assert k["rows"][0]["tiled"] == [[0, 0.4]] and k["rows"][0]["lowrank"] == [[0, 0.3]]
    assert h.kept_entries([k], h.FULL, {}) == [k]


def test_screen_page_names_steps_lr_and_the_training_architecture_gap():
    """A screen row states its dataset, decoder, steps and peak lr; a row with the main
    table's setup is checked against the main table's seed-0 run; a row evaluated on
    training architectures gets its gap (training minus test) from its own numbers."""
    h = bench()
    rows = [{"arch": "cnn", "kwargs": {"norm": "batch"}, "kaiming": [[0, 0.1], [10, 0.8]]},
            {"arch": "tiny_resnet", "kwargs": {}, "kaiming": [[0, 0.1], [10, 0.6]]}]
    base = {"dataset": "digits", "trained_acc": 0.7, "rows": rows}
    gb = dict(base, trained_acc=0.9, rows=[dict(rows[0], kaiming=[[0, 0.1], [10, 1.0]]), rows[1]],
              sampler_seeds=[0, 1], epochs=15, seconds=1.0, which="the first 2 of the 300 training architectures",
              command="gap cmd")
    su = h.setup_of(h.FULL, {}, "tiled")
    main = {"dataset": "digits", "seed": 0, "tiled_acc0": 0.35, "tiled_ratio_to_trained": 0.5,
            "setups": {"tiled": su}, "decoders_run": ["tiled"]}

    def row(variant, lr, acc):
        return {"variant": variant, "dataset": "digits", "decoder": "tiled", "ghn_extra": {}, "seed": 0,
                "steps": su["ghn_steps"], "lr": lr, "decoder_opts": h.DECODERS["tiled"], "seconds_per_step": 0.5,
                "points": [{"step": su["ghn_steps"], "acc0": acc, "ratio": acc / 0.7, "per_arch": [acc, acc],
                            "loss": 1.0}], "command": "screen cmd"}

    fast = dict(row("meta lr 1e-3", 1e-3, 0.56), train_archs={"n": 2, "acc0": 0.72, "ratio": 0.85,
                                                             "per_arch": [0.9, 0.54]})
    old = dict(row("meta lr 3e-4 (default)", 3e-4, 0.2), command="old cmd")   # stored under its former name
    res = {"config": dict(h.FULL), "command": "x", "trained": [base], "trained_train": [gb],
           "predict_init": [main], "screen": [old, row("meta lr 3e-3", h.META_LR, 0.35), fast]}
    page = "\n".join(h.screen_md(h.relabel(res)))
    n = su["ghn_steps"]                                              # the rows have the main table's steps
    assert f"| meta lr 1e-3 | digits | tiled | - | {n} | 0.001 | 0.560 | 0.800 |" in page
    assert f"| meta lr 3e-4 (default until session 8) | digits | tiled | - | {n} | 0.0003 | 0.200 |" in page
    assert "(default)" not in page.replace("`old cmd`", "")
    assert "Reproduction: 'meta lr 3e-3' is the main table's setup" in page
    assert "predicted / trained 0.500 here, 0.500 in the main table (+0.000)" in page
    assert page.count("Reproduction:") == 1                         # lr 1e-3 and 3e-4 are not the main table's
    # training archs 0.850 against test 0.800: gap +0.050; cnn 0.9 / 1.0 on the training archs
    assert f"| meta lr 1e-3 | digits | tiled | {n} | 0.001 | 0.560 | 0.800 | 0.720 | 0.850 | +0.050 | 0.900 (1) |" in page
    assert "`gap cmd`" in page


def test_the_main_table_meta_trains_at_the_librarys_default_rate_and_pages_state_each_runs_rate():
    """FULL/QUICK read the peak meta-learning rate from PredictInitConfig; the ratio-curve
    text states the rate its entries ran at (3e-4 for entries stored without one); renamed
    screen variants map to existing ones."""
    from tasks.predict_init import PredictInitConfig

    h = bench()
    assert h.FULL["ghn_lr"] == h.QUICK["ghn_lr"] == PredictInitConfig().lr
    assert h.setup_of(h.FULL, {}, "tiled")["ghn_lr"] == PredictInitConfig().lr
    assert all(new in h.SCREEN and old not in h.SCREEN for old, new in h.RENAMED.items())
    base = {"dataset": "digits", "trained_acc": 0.7,
            "rows": [{"arch": "cnn", "kwargs": {}, "kaiming": [[0, 0.1], [10, 0.7]]}]}
    entry = {"dataset": "digits", "decoder": "tiled", "steps": 10, "command": "rc",
             "points": [{"step": 10, "acc0": 0.35, "ratio": 0.5, "per_arch": [0.35], "loss": 1.0}]}
    for stored, shown in ((None, "peak lr 0.0003,"), (3e-3, "peak lr 0.003,")):
        e = dict(entry) if stored is None else dict(entry, lr=stored)
        page = "\n".join(h.ratio_curve_md({"ratio_curve": [e], "trained": [base], "command": "x"}))
        assert shown in page


def test_a_main_table_run_of_one_dataset_keeps_the_others_baseline_and_entries(tmp_path, monkeypatch):
    """--keep --datasets digits: mnist1d's trained baseline (read by kept screen and
    ratio-curve rows) and its main-table entries of the same setup stay, and "datasets"
    still names it; digits' entry is this run's."""
    h = bench()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    setups = {"tiled": h.setup_of(h.FULL, {}, "tiled")}

    def base(ds):
        return {"dataset": ds, "trained_acc": 0.7, "n_test": 1, "epochs": 1, "seconds": 1.0, "command": f"b {ds}",
                "rows": [{"arch": "cnn", "kwargs": {}, "kaiming": [[0, 0.1]]}]}

    def entry(ds, acc0, cmd):
        return {"dataset": ds, "seed": 0, "trained_acc": 0.7, "kaiming_acc0": 0.1, "decoders_run": ["tiled"],
                "setups": setups, "tiled_acc0": acc0, "tiled_ratio_to_trained": acc0 / 0.7, "tiled_acc_1ep": 0.5,
                "kaiming_acc_1ep": 0.3, "tiled_steps95_ratio": 0.5, "command": cmd, "ghn": {"tiled": {"command": cmd}},
                "rows": [{"tiled": [[0, acc0]]}]}

    old = {"config": h.FULL, "datasets": ["digits", "mnist1d"], "command": "old", "kept": [], "sources": {},
           "predict_init": [entry("digits", 0.2, "old"), entry("mnist1d", 0.3, "old")],
           "trained": [base("digits"), base("mnist1d")]}
    (tmp_path / "benchmarks" / "results" / "hyper.json").write_text(json.dumps(old))
    saved = {}
    monkeypatch.setattr(h, "ROOT", tmp_path)
    monkeypatch.setattr(h, "matching_baseline", lambda trained, ds, cfg: next(t for t in trained if t["dataset"] == ds))
    monkeypatch.setattr(h, "predict_init_section", lambda ds, seed, cfg, tmp, b, decs, extra: entry(ds, 0.4, "new"))
    monkeypatch.setattr(h, "save_json", lambda res, path: saved.update(json.loads(json.dumps(res))))
    monkeypatch.setattr(h, "write_md", lambda res, path, cmd: None)
    monkeypatch.setattr(h, "FULL", dict(h.FULL, seeds=1))
    h.main(["--skip", "size", "mip", "scale", "--keep", "--datasets", "digits", "--predict-decoders", "tiled"])
    assert saved["datasets"] == ["digits", "mnist1d"]
    assert sorted(t["dataset"] for t in saved["trained"]) == ["digits", "mnist1d"]
    assert next(t for t in saved["trained"] if t["dataset"] == "mnist1d")["command"] == "b mnist1d"
    by_ds = {e["dataset"]: e for e in saved["predict_init"]}
    assert by_ds["mnist1d"]["tiled_acc0"] == 0.3 and by_ds["digits"]["tiled_acc0"] == 0.4
