"""benchmarks/augment.py's bookkeeping: cells keep one score per seed (and the fit on the
training networks), and the verdict counts only configurations run on every seed and
checks the best one on fresh seeds when such a run exists."""

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("augment")


SETTINGS = dict(zoo="zoos/x", where={}, target="label", gmn={}, networks=10, train=7, test=3, epochs=2, steps=4,
                batch=2, split_by="image", score="accuracy")


def table(bench, cells: dict, seeds=(0, 1, 2), fits=None) -> dict:
    """A main-table result from {fraction: {aug: {seed: score}}}."""
    res = dict(SETTINGS, seeds=list(seeds), score_by_fraction={}, seeds_by_fraction={})
    for f, augs in cells.items():
        for aug, by_seed in augs.items():
            for s, v in by_seed.items():
                bench.record(res, f, aug, s, v, (fits or {}).get((f, aug, s)))
    return res


def test_record_replaces_a_seed_and_keeps_the_fit(bench):
    res = dict(SETTINGS, seeds=[0, 1], score_by_fraction={}, seeds_by_fraction={})
    bench.record(res, 0.1, "noise", 1, 0.5, 0.9)
    bench.record(res, 0.1, "noise", 0, 0.2)
    bench.record(res, 0.1, "noise", 1, 0.4, 0.8)
    assert res["score_by_fraction"]["0.1"]["noise"] == [0.4, 0.2]
    assert res["seeds_by_fraction"]["0.1"]["noise"] == [1, 0]
    assert res["fit_by_fraction"]["0.1"]["noise"] == {"1": 0.8}


def test_verdict_counts_only_full_seed_rows(bench):
    three = {0: 0.0, 1: 0.0, 2: 0.0}
    res = table(bench, {0.1: {"none": {0: 0.2, 1: 0.2, 2: 0.2}, "noise": {0: 0.55, 1: 0.55, 2: 0.55},
                              "lucky": {0: 0.9}},
                        1.0: {"none": {s: 0.8 for s in three}}})
    text = "\n".join(bench._verdict({"gmn_inr": res}))
    # noise: (0.55 - 0.2) / 0.6 = 58% -> met; the one-seed 'lucky' row is listed, not counted
    assert "Best with all 3 seeds: noise, 58% of the gap" in text
    assert "lucky 0.9000 (117%; 1 seed)" in text
    assert "1 more run on fewer seeds" in text
    assert "Target met on these seeds; not yet checked" in text
    res["score_by_fraction"]["0.1"]["noise"] = [0.4, 0.4, 0.4]
    text = "\n".join(bench._verdict({"gmn_inr": res}))
    assert "noise, 33% of the gap" in text and "Target not met." in text


def test_verdict_checks_the_best_on_fresh_seeds(bench):
    main = table(bench, {0.1: {"none": {s: 0.2 for s in (0, 1, 2)}, "mix": {s: 0.6 for s in (0, 1, 2)}},
                         1.0: {"none": {s: 0.8 for s in (0, 1, 2)}}},
                 fits={(0.1, "none", 0): 1.0, (0.1, "mix", 0): 0.7})
    fresh = table(bench, {0.1: {"none": {s: 0.3 for s in (3, 4, 5)}, "mix": {s: 0.2 for s in (3, 4, 5)}},
                          1.0: {"none": {s: 0.8 for s in (3, 4, 5)}}}, seeds=(3, 4, 5))
    alone = "\n".join(bench._verdict({"gmn_inr": main}))
    assert "mix, 67% of the gap" in alone and "Target met on these seeds" in alone
    assert "no augmentation 1.0000, mix 0.7000" in alone     # the fit, where recorded
    assert "none 1.0000 / 0.2000 (1), mix 0.7000 / 0.6000 (1)" in alone
    bench.record(main, 1.0, "mix", 1, 0.5)      # one seed at 100%: compared with no augmentation's same seed
    main["score_by_fraction"]["1.0"]["none"][1] = 0.9
    assert "mix scores 0.5000 against 0.9000 at 100% (seeds [1])" in "\n".join(bench._verdict({"gmn_inr": main}))
    del main["score_by_fraction"]["1.0"]["mix"], main["seeds_by_fraction"]["1.0"]["mix"]
    main["score_by_fraction"]["1.0"]["none"][1] = 0.8
    both = "\n".join(bench._verdict({"gmn_inr": main, "gmn_inr@fresh": fresh}))
    # pooled over 6 seeds: none 0.25 / 0.8, mix 0.4 -> 27%
    assert "over 6 seeds at 10% it recovers 27%" in both and "Target not met once checked on fresh seeds." in both
    # a check that holds; the fits of the check run count too
    good = table(bench, {0.1: {"none": {s: 0.3 for s in (3, 4, 5)}, "mix": {s: 0.7 for s in (3, 4, 5)}},
                         1.0: {"none": {s: 0.8 for s in (3, 4, 5)}}}, seeds=(3, 4, 5),
                 fits={(0.1, "none", 3): 0.8, (0.1, "mix", 3): 0.5})
    text = "\n".join(bench._verdict({"gmn_inr": main, "gmn_inr@fresh": good}))
    assert "over 6 seeds at 10% it recovers 73%" in text and "Target met once checked on fresh seeds." in text
    assert "(mean over the 2 and 2 runs that recorded it): no augmentation 0.9000, mix 0.6000" in text
    # a check without no augmentation at 100% takes that level from the main table's seeds
    del good["score_by_fraction"]["1.0"], good["seeds_by_fraction"]["1.0"]
    text = "\n".join(bench._verdict({"gmn_inr": main, "gmn_inr@fresh": good}))
    assert "over 6 seeds at 10% (100% from the main table's 3) it recovers 73%" in text
    assert "0.8000 at 100% (the main table's seeds [0, 1, 2]: not run on these)" in "\n".join(
        bench._checked(main, [dict(good, name="fresh")]))
    # a kept-apart run with other settings is no check
    other = dict(fresh, epochs=99)
    assert "not yet checked" in "\n".join(bench._verdict({"gmn_inr": main, "gmn_inr@other": other}))


def test_parse_aug_errors(bench):
    assert bench.parse_aug("none") == []
    assert bench.parse_aug("mixup_align:alpha=0.4+noise:sigma=0.02") == [("mixup_align", {"alpha": 0.4}),
                                                                        ("noise", {"sigma": 0.02})]
    with pytest.raises(ValueError, match="unknown augmentation 'nosie'"):
        bench.parse_aug("nosie")
    with pytest.raises(ValueError, match="not key=value"):
        bench.parse_aug("noise:sigma")


def test_gmn_options_keep_their_own_table_checks_and_verdict(bench):
    assert bench.base_key("inr") == "gmn_inr"
    assert bench.base_key("inr", {"readout_norm": "batch"}) == "gmn_inr[readout_norm=batch]"
    plain = table(bench, {0.1: {"none": {s: 0.2 for s in (0, 1, 2)}, "mix": {s: 0.6 for s in (0, 1, 2)}},
                          1.0: {"none": {s: 0.8 for s in (0, 1, 2)}}})
    rn = dict(table(bench, {0.1: {"none": {s: 0.4 for s in (0, 1, 2)}, "mix": {s: 0.5 for s in (0, 1, 2)}},
                            1.0: {"none": {s: 0.6 for s in (0, 1, 2)}}}), gmn={"readout_norm": "batch"})
    check = dict(table(bench, {0.1: {"none": {s: 0.4 for s in (3, 4, 5)}, "mix": {s: 0.4 for s in (3, 4, 5)}},
                               1.0: {"none": {s: 0.6 for s in (3, 4, 5)}}}, seeds=(3, 4, 5)),
                 gmn={"readout_norm": "batch"})
    results = {"gmn_inr": plain, "gmn_inr[readout_norm=batch]": rn, "gmn_inr[readout_norm=batch]@fresh": check,
               "gmn_inr@old": dict(check, gmn={})}
    assert bench._bases(results, "inr") == ["gmn_inr", "gmn_inr[readout_norm=batch]"]
    text = "\n".join(bench._verdict(results))
    plain_part, rn_part = text.split("GMN (readout_norm='batch')")
    # the plain table is checked only by the plain kept-apart run (none 0.3 / 0.7, mix 0.5 over 6 seeds)
    assert "mix, 67% of the gap" in plain_part and "over 6 seeds at 10% it recovers 50%" in plain_part
    # readout norm: 3 seeds 50%; pooled with the check (0.45 vs none 0.4 / 0.6) 25%
    assert "mix, 50% of the gap" in rn_part and "over 6 seeds at 10% it recovers 25%" in rn_part
    assert "Target not met once checked on fresh seeds." in rn_part
    # a check run with another GMN never checks this table
    alone = "\n".join(bench._verdict({"gmn_inr[readout_norm=batch]": rn, "gmn_inr@fresh": dict(check, gmn={})}))
    assert "not yet checked" in alone
    # the fit at 100% without augmentation, where recorded (underfitting there narrows the gap)
    bench.record(rn, 1.0, "none", 0, 0.6, 0.7)
    assert "No augmentation at 100%: training networks 0.7000 / test 0.6000 (1 runs)" in "\n".join(
        bench._verdict({"gmn_inr[readout_norm=batch]": rn}))
    # a hand-written reading of a table's runs, kept in the JSON by results key, follows that verdict only
    text = "\n".join(bench._verdict({"gmn_inr": plain, "gmn_inr[readout_norm=batch]": rn,
                                     "notes": {"gmn_inr[readout_norm=batch]": "memorises"}}))
    assert text.count("What the measurements say: memorises") == 1
    assert text.index("What the measurements say") > text.index("GMN (readout_norm='batch')")
