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
