"""``metanet quickstart``: the README's main command runs every step and reports numbers
that mean what they say; a failed step keeps the others; bad options are refused."""
import json

import pytest

from metanet.cli import main
from tasks import quickstart as qs


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    code = main(["quickstart", "--fast", "--quiet", "--out", str(out)])
    return code, out


def test_quickstart_runs_every_step_and_reports(fast_run, capsys):
    code, out = fast_run
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == {} and list(summary["steps"]) == list(qs.STEPS)
    s = summary["steps"]
    # 1. the symmetries were checked numerically and the graph inverts bit for bit
    assert s["weights"]["groups"] > 0 and s["weights"]["verify_shapes"] >= 2
    assert all(err < 1e-5 for err in s["weights"]["verify_max_rel_err"].values())
    assert s["weights"]["graph_round_trip_exact"] is True
    # 2-3. a zoo, and both metanetworks scored on it
    assert s["zoo"]["checkpoints"] == 3 * s["zoo"]["networks"]
    for kind in ("statnn", "gmn"):
        assert -1 <= s["metanet"][kind]["tau"] <= 1
    # 4. exact augmentations keep the logits; both barriers were measured
    changes = s["augment"]["max_rel_output_change"]
    assert changes["RandomPermutation"] < 1e-5 and changes["RandomScaling"] < 1e-5
    assert s["augment"]["barrier_before"] >= 0 and s["augment"]["barrier_aligned"] >= 0
    # 5. the GHN initialised architectures it never saw, each against its own init
    ghn = s["ghn"]
    assert len(ghn["rows"]) == ghn["test_archs"] >= 1
    assert all(r["seed"] >= qs.GHN_TEST_SEED0 and r["predicted_tensors"] > 0 for r in ghn["rows"])
    assert all(0 <= v <= 1 for v in ghn["mean"].values())
    # 6. both pruning methods reached about the target FLOP reduction
    for method in ("magnitude", "meta (strength chosen)"):
        assert 0 <= s["prune"][method]["accuracy"] <= 1
        assert s["prune"][method]["flop_reduction"] > 1.5
    text = (out / "report.md").read_text()
    for heading in ("1. Weight space", "2. A checkpoint zoo", "3. Predicting accuracy", "4. Weight-space",
                    "5. Predicting initial parameters", "6. Pruning"):
        assert heading in text
    assert (out / "ghn_unseen.png").exists() and (out / "metanet_gmn" / "predicted_vs_true.png").exists()


def test_a_failed_step_keeps_the_others(fast_run, monkeypatch, capsys):
    """A step that raises is reported (exit 1) and the other steps still run and are
    written; the zoo of the earlier run is reused when the zoo step is left out."""
    _, out = fast_run
    before = json.loads((out / "summary.json").read_text())["steps"]["weights"]

    def broken(r):
        raise RuntimeError("simulated failure")

    monkeypatch.setitem(qs._STEP_FUNCS, "weights", broken)
    code = main(["quickstart", "--fast", "--quiet", "--out", str(out), "--steps", "weights", "augment"])
    assert code == 1
    assert "did not finish: weights" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == {"weights": "RuntimeError: simulated failure"}
    assert "augment" in summary["steps"] and "weights" not in summary["steps"]
    # the earlier run's results stay, marked as earlier: the failed step's and the steps
    # not rerun (zoo, metanet, ghn, prune); the rerun augment step is this run's
    assert summary["earlier_steps"]["weights"] == before
    assert set(summary["earlier_steps"]) == set(qs.STEPS) - {"augment"}
    text = (out / "report.md").read_text()
    assert "Step weights failed" in text and "## 6. Pruning" in text
    assert text.count("From an earlier run") == len(qs.STEPS) - 1


def test_bad_options_are_refused(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--steps", "weights", "bogus"]) == 2
    assert "steps must be" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(tmp_path), "--zoo-networks", "0"]) == 2
    assert "zoo_networks must be at least 1" in capsys.readouterr().err
    # the zoo-reading steps without a zoo: skipped with the reason, nothing else run
    assert main(["quickstart", "--fast", "--quiet", "--out", str(tmp_path), "--steps", "augment"]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == {"augment": "skipped: it needs the zoo step"}
