"""regscore and the bootstrap threshold, on data where the answer is known."""
import numpy as np
import pytest

from cvflow.convergence import bootstrap_threshold, knn_regscores, pairwise_regscores, regscore


def test_regscore_of_an_affine_map_is_one_and_of_noise_is_near_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 2))
    assert regscore(a, a @ np.array([[2.0, -1.0], [0.5, 3.0]]) + 7) == pytest.approx(1.0, abs=1e-12)
    # independent noise: R² = d1 / (n − d1 − 1) on average; 2 regressors on 2000 frames → 1e-3
    assert regscore(a, rng.normal(size=(2000, 1))) < 0.01
    # half the variance explained: b = a0 + e with var(e) = var(a0) → R² = 1/2 (± 2/sqrt(n))
    b = a[:, :1] + rng.normal(size=(2000, 1))
    assert regscore(a, b) == pytest.approx(0.5, abs=0.05)


def test_knn_score_sees_a_nonlinear_reembedding_of_the_same_cv_that_the_linear_one_misses():
    """Two 2-D embeddings of the same (φ, ψ)-like pair: the second rotated by 90°, folded by a
    tanh and wrapped through cos/sin. The k-NN score finds them the same CV; the paper's
    linear score does not. An embedding of other coordinates scores near 0 either way."""
    rng = np.random.default_rng(3)
    t = rng.uniform(-1, 1, size=(20_000, 2))
    a = np.column_stack([t[:, 0] + 0.3 * t[:, 1], t[:, 1]])
    b = np.column_stack([np.cos(2.5 * t[:, 1]), np.tanh(3 * t[:, 0]) * np.sin(2 * t[:, 1] + 1)])
    lin, knn = regscore(a, b), regscore(a, b, method="knn")
    assert lin < 0.5
    # smooth map, 25 neighbours among 10,000 frames in 2-D: the neighbourhood's spread in b
    # is a few 1e-3 of b's variance
    assert knn > 0.99
    assert np.allclose(knn_regscores(a * [1e-3, 40.0] + 5, b), knn_regscores(a, b))  # a standardised
    other = rng.normal(size=(20_000, 2))
    assert regscore(other, b, method="knn") < 0.05
    # a CV that determines one output only: that output near 1, the other near 0
    per = knn_regscores(a[:, 1:], np.column_stack([np.cos(2.5 * t[:, 1]), t[:, 0]]))
    assert per[0] > 0.99 and per[1] < 0.05


def test_weights_are_frame_multiplicities():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 1)), rng.normal(size=(300, 2))
    b[:, 0] += 2 * a[:, 0]
    k = rng.integers(0, 4, size=300)
    rep = np.repeat(np.arange(300), k)
    assert regscore(a, b, k) == pytest.approx(regscore(a[rep], b[rep]), rel=1e-10)


def test_bootstrap_threshold_is_the_quantile_of_the_pairwise_scores():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 2))
    w = np.ones(500)

    def train(xs, ws, seed):  # "networks" that find x0 up to noise of their own
        r = np.random.default_rng(seed)
        c = r.normal(scale=0.1)
        return lambda z: (z[:, :1] + c * z[:, 1:2])
    thr, scores = bootstrap_threshold(train, x, w, repeats=4, fraction=0.8, quantile=0.05, rng=rng)
    assert len(scores) == 4 * 3 and thr == pytest.approx(np.quantile(scores, 0.05))
    assert 0.9 < thr <= 1.0
    assert np.allclose(pairwise_regscores([x[:, :1], x[:, :1] * 3]), 1.0)


def test_bootstrap_in_worker_processes_matches_the_serial_path():
    """The bootstrap networks trained in spawned processes (one torch thread each) give the
    same scores as the same trainings in this process with one thread: the resamples and
    seeds do not depend on where the trainings run."""
    import functools
    import torch
    from cvflow.config import ModelConfig
    from cvflow.train import bootstrap_member, bootstrap_workers, process_map
    rng = np.random.default_rng(5)
    t = rng.uniform(-1, 1, size=(600, 1))
    x = np.column_stack([t, t ** 2, 0.1 * rng.normal(size=(600, 1))])
    w = rng.uniform(0.5, 1.5, size=600)
    cfg = ModelConfig(hidden=[8], bottleneck=1, epochs=15, batch_size=64, patience=5, threads=1)
    train = functools.partial(bootstrap_member, model_cfg=cfg)
    threads = torch.get_num_threads()
    serial = bootstrap_threshold(train, x, w, 3, 0.8, 0.05, np.random.default_rng(7))
    torch.set_num_threads(threads)
    with process_map(2) as pmap:
        parallel = bootstrap_threshold(train, x, w, 3, 0.8, 0.05, np.random.default_rng(7), map_fn=pmap)
    assert np.array_equal(serial[1], parallel[1]) and serial[0] == parallel[0]
    assert bootstrap_workers("auto", 4, 1800) == 1 and bootstrap_workers(3, 2, 10) == 2


def test_a_state_without_weight_gets_no_free_energy_and_the_line_says_which(tmp_path):
    from cvflow.states import format_states, state_free_energies
    w = np.ones(100)
    inside = np.zeros(100, bool)
    res = state_free_energies({"C7eq": inside, "C7ax": ~inside}, w, 2.494)
    assert res["populations"]["C7ax"]["value"] == 1.0
    assert not np.isfinite(res["delta_f"]["C7ax"]["value"])
    line = format_states(res)[1]
    assert "nan" not in line and "undefined: no weight in C7eq" in line
    # written to JSON the undefined ΔF is null (NaN is not JSON), and the line read back is the same
    import json
    from cvflow import artifacts as art
    art.write_json(tmp_path / "s.json", res)
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and json.loads(text)["delta_f"]["C7ax"]["value"] is None
    assert format_states(art.read_json(tmp_path / "s.json"))[1] == line
    ok = state_free_energies({"C7eq": inside | (np.arange(100) < 90), "C7ax": np.arange(100) >= 90}, w, 2.494)
    assert "ΔF(C7ax − C7eq) = 5.48" in format_states(ok)[1]  # −kT ln(10/90)


def test_a_state_in_too_few_blocks_has_no_error_bar_and_the_line_says_why(tmp_path):
    """Block bootstrap of ΔF: when the reference state has weight in only the first of 10
    blocks (seed 5 of ala2-paper's frozen production: C7eq in 1 of its 10 blocks, ΔF
    "7.39 ± 0.0002"), resamples without that block have no ΔF, so the error is undetermined
    (null in JSON) and the line names the state and its blocks; a state present in every
    block keeps a finite error bar, close to the analytic one of independent blocks."""
    from cvflow import artifacts as art
    from cvflow.states import format_states, state_free_energies
    rng = np.random.default_rng(0)
    n = 10_000
    w = rng.uniform(0.5, 1.5, n)
    early = np.arange(n) < 600  # the reference state only in the first block (1000 frames)
    res = state_free_energies({"C7eq": early, "C7ax": ~early}, w, 2.494)
    d = res["delta_f"]["C7ax"]
    assert np.isfinite(d["value"]) and not np.isfinite(d["error"])
    assert d["blocks_with_weight"] == {"C7eq": 1, "C7ax": 10}
    assert d["error_note"].startswith("C7eq has weight in 1 of 10 blocks of frames")
    line = format_states(res)[1]
    assert "± " not in line.split("ΔF")[1] and "error undetermined: C7eq has weight in 1 of 10 blocks" in line
    art.write_json(tmp_path / "s.json", res)
    assert format_states(art.read_json(tmp_path / "s.json")) == format_states(res)
    # a state in every block: a block bootstrap error near the spread of the block estimates / √10
    mixed = rng.uniform(size=n) < 0.2
    ok = state_free_energies({"C7eq": ~mixed, "C7ax": mixed}, w, 2.494)["delta_f"]["C7ax"]
    assert "error_note" not in ok and ok["blocks_with_weight"] == {"C7eq": 10, "C7ax": 10}
    blocks = [-2.494 * np.log(w[b][mixed[b]].sum() / w[b][~mixed[b]].sum()) for b in np.array_split(np.arange(n), 10)]
    # (the bootstrap of 10 blocks gives √(9/10) of that, ± about 5% from its 200 resamples)
    assert ok["error"] == pytest.approx(np.sqrt(0.9) * np.std(blocks, ddof=1) / np.sqrt(10), rel=0.15)


def test_transitions_count_stays_not_recrossings_of_a_shared_box_edge():
    """state_transitions: a stay is min_dwell frames in a row in one state's box alone; brief
    recrossings of the edge two boxes share (C5 frames at φ ≈ ±180° between C7eq [-180, 0]
    and C7ax [0, 180]) and frames in no box do not add transitions; both directions count,
    and with three states each is counted against the reference. ΔF's line says how many,
    and calls fewer than FEW_TRANSITIONS too few for its error bar."""
    from cvflow.states import FEW_TRANSITIONS, delta_f_text, state_free_energies, state_transitions
    phi = np.concatenate([np.full(50, -150.0),
                          np.tile([179.0, 179.0, -179.0, -170.0], 10),   # edge recrossings: 2-frame stays
                          np.full(30, 60.0),                             # C7ax: one stay
                          np.full(3, 200.0),                             # in no box (outside both)
                          np.full(30, 60.0),                             # still the same stay
                          np.full(40, -80.0),                            # back to C7eq
                          np.full(4, 70.0), np.full(20, -70.0)])         # a 4-frame excursion
    eq, ax = (phi >= -180) & (phi <= 0), (phi >= 0) & (phi <= 180)
    assert state_transitions({"C7eq": eq, "C7ax": ax}, 5) == {"C7ax": 2}
    assert state_transitions({"C7eq": eq, "C7ax": ax}, 1)["C7ax"] > 20  # every change of box
    third = np.zeros_like(eq)
    third[100:103] = True  # inside the C7ax stay: in two boxes, so in neither alone there
    assert state_transitions({"C7eq": eq, "C7ax": ax, "other": third}, 5) == {"C7ax": 2, "other": 0}
    res = state_free_energies({"C7eq": eq, "C7ax": ax}, np.ones(len(phi)), 2.494, min_dwell=5)
    d = res["delta_f"]["C7ax"]
    assert d["transitions"] == 2 < FEW_TRANSITIONS
    assert "only 2 transitions between them: too few for the error bar to hold" in delta_f_text(d)
    assert delta_f_text({**d, "transitions": FEW_TRANSITIONS}).endswith(f", {FEW_TRANSITIONS} transitions")
    assert "transitions" not in state_free_energies({"C7eq": eq, "C7ax": ax}, np.ones(len(phi)), 2.494)["delta_f"]["C7ax"]


def test_delta_f_records_its_halves():
    """Each ΔF also gives its value on each half of the frames alone: here C7ax holds half the
    weight in the first half and a quarter in the second, so the halves are 0 and kT ln 3,
    and the whole, with C7ax at 3/8 of the weight, is kT ln(5/3)."""
    from cvflow.states import delta_f_text, state_free_energies
    kT = 2.494
    ax = np.array([True, False] * 50 + [True, False, False, False] * 25)
    w = np.ones(len(ax))
    d = state_free_energies({"C7eq": ~ax, "C7ax": ax}, w, kT)["delta_f"]["C7ax"]
    assert np.allclose(d["halves"], [0.0, kT * np.log(3.0)], atol=1e-12)
    assert np.isclose(d["value"], kT * np.log(5.0 / 3.0))
    assert "(halves 0.00, 2.74)" in delta_f_text(d)
    # a half without weight in a state has no ΔF there, and says so
    ax[:100] = False
    d = state_free_energies({"C7eq": ~ax, "C7ax": ax}, w, kT)["delta_f"]["C7ax"]
    assert np.isnan(d["halves"][0]) and "(halves undefined, 2.74)" in delta_f_text(d)


def test_a_delta_f_whose_halves_disagree_is_said_to_drift(fixed_rng):
    """halves_z is the halves' difference over its standard error, from each half's own
    block bootstrap (the whole's would contain the drift). A stationary two-state series
    stays under DRIFT_Z; one whose second half holds C7ax three times less often than its
    first goes over it, and its text says so."""
    from cvflow.states import DRIFT_Z, delta_f_text, drifts, state_free_energies, weightless_half_hint
    kT = 2.494

    def series(p_first, p_second, n=20_000, dwell=50):
        # stays of `dwell` frames, each in C7ax with probability p (first half, second half)
        p = np.where(np.arange(n // dwell) < n // dwell // 2, p_first, p_second)
        return np.repeat(fixed_rng.random(n // dwell) < p, dwell)

    w = np.ones(20_000)
    steady = state_free_energies({"C7eq": ~(ax := series(0.3, 0.3)), "C7ax": ax}, w, kT)["delta_f"]["C7ax"]
    assert 0 <= steady["halves_z"] < DRIFT_Z and not drifts(steady) and "drifting" not in delta_f_text(steady)
    moved = state_free_energies({"C7eq": ~(ax := series(0.45, 0.15)), "C7ax": ax}, w, kT)["delta_f"]["C7ax"]
    h1, h2 = moved["halves"]
    assert np.isclose(moved["halves_z"], abs(h2 - h1) / np.hypot(*moved["halves_errors"]))
    assert moved["halves_z"] > DRIFT_Z and drifts(moved)
    # the whole's error contains the drift: the halves differ by little more than 2σ of it
    assert abs(h2 - h1) / (2 * moved["error"]) < DRIFT_Z
    # a second half that holds C7ax only at its start has no error of its own (resamples
    # without C7ax): it counts √2 times the whole's, and the drift is still found
    held = series(0.45, 0.45)
    held[11_000:] = False
    d = state_free_energies({"C7eq": ~held, "C7ax": held}, w, kT)["delta_f"]["C7ax"]
    assert np.isfinite(d["halves_errors"][0]) and np.isnan(d["halves_errors"][1]) and np.isfinite(d["error"])
    assert np.isclose(d["halves_z"], abs(d["halves"][1] - d["halves"][0])
                      / np.hypot(d["halves_errors"][0], np.sqrt(2) * d["error"]))
    assert drifts(d)
    res = state_free_energies({"C7eq": ~held, "C7ax": held}, np.r_[np.ones(10_000), np.full(10_000, 3.0)], kT)
    assert np.allclose(res["halves_weight"], [0.25, 0.75]) and weightless_half_hint(res) is None
    # a second half without weight (seed 9 of the paper protocol): not "sample longer"
    res = state_free_energies({"C7eq": ~held, "C7ax": held}, np.r_[np.ones(10_000), np.full(10_000, 1e-16)], kT)
    assert weightless_half_hint(res).startswith("the second half of the frames carries 1e-16 of the weight")
    assert f"drifting: its halves differ by {moved['halves_z']:.1f} standard errors" in delta_f_text(moved)


def test_frozen_extension_goes_on_by_the_rate_seen_and_stops_where_the_cap_cannot_help():
    """frozen_extension: a stage with enough transitions stops; one short of them goes on
    to a fifth more than its rate says it needs (at least a quarter more, a multiple of the
    report interval, at most the cap); one whose rate cannot reach the target within the
    cap (or with no transition at all) is not extended, and the line says why."""
    from cvflow.states import frozen_extension
    steps, cap = 20_000_000, 80_000_000
    assert frozen_extension({"C7ax": 30}, steps, 30, cap, 250) == (steps, None)
    assert frozen_extension({}, steps, 30, cap, 250) == (steps, None)
    new, note = frozen_extension({"C7ax": 11, "aR": 40}, steps, 30, cap, 250)
    assert new == 65_454_750 and new % 250 == 0  # 1.2 × 20M × 30/11, rounded up to 250
    assert note.startswith("11 transition(s) between the reference state and C7ax in 20,000,000 steps")
    assert new == frozen_extension({"C7ax": 11}, steps, 30, cap, 250)[0]
    assert frozen_extension({"C7ax": 29}, steps, 30, cap, 250)[0] == 25_000_000  # a quarter more at least
    assert frozen_extension({"C7ax": 9}, steps, 30, cap, 250)[0] == cap  # 80M needed: the cap, reached
    for few in (0, 7):  # 30 need 85.7M with 7: beyond the cap
        new, note = frozen_extension({"C7ax": few}, steps, 30, cap, 250)
        assert new == steps and note.endswith("beyond the maximum length (80,000,000 steps): not extended")
    new, note = frozen_extension({"C7ax": 29}, cap, 30, cap, 250)
    assert new == cap and "at its maximum length" in note
    # a target above FEW_TRANSITIONS (a smaller error bar) that the cap cannot reach: on to
    # the cap while the rate says the cap gives at least FEW_TRANSITIONS, else not extended
    new, note = frozen_extension({"C7ax": 20}, steps, 100, cap, 250)  # 100 need 100M; the cap gives about 80
    assert new == cap and note.endswith("beyond the maximum length: going on to it (80,000,000 steps, about 80 "
                                        "at this rate)")
    assert frozen_extension({"C7ax": 8}, steps, 100, cap, 250)[0] == cap  # about 32 at the cap
    new, note = frozen_extension({"C7ax": 7}, steps, 100, cap, 250)  # about 28 at the cap: too few
    assert new == steps and note.endswith("not extended")
    assert frozen_extension({"C7ax": 51}, steps, 100, cap, 250)[0] == 47_059_000  # 1.2 × 20M × 100/51, rounded up to 250


def test_drift_extension_doubles_a_drifting_stage_up_to_its_cap(fixed_rng):
    """drift_extension: a frozen stage whose ΔF drifts (halves more than DRIFT_Z standard
    errors apart) goes on to twice its length, a multiple of the report interval, at most
    the cap, and the line names the most drifting ΔF and its halves; a stationary one, or
    one at its cap, stops (None: the final analysis's warning says it). On series built as
    in the drift test: C7ax held 45 % then 15 % of the time drifts, 30 % throughout does not."""
    from cvflow.states import drift_extension, state_free_energies
    kT = 2.494

    def series(p_first, p_second, n=20_000, dwell=50):
        p = np.where(np.arange(n // dwell) < n // dwell // 2, p_first, p_second)
        return np.repeat(fixed_rng.random(n // dwell) < p, dwell)
    w = np.ones(20_000)
    steady = state_free_energies({"C7eq": ~(ax := series(0.3, 0.3)), "C7ax": ax}, w, kT)["delta_f"]
    moved = state_free_energies({"C7eq": ~(ax := series(0.45, 0.15)), "C7ax": ax}, w, kT)["delta_f"]
    steps, cap = 20_000_000, 80_000_000
    assert drift_extension(steady, steps, cap, 250, "C7eq") == (steps, None)
    new, note = drift_extension(moved, steps, cap, 250, "C7eq")
    h1, h2 = moved["C7ax"]["halves"]
    assert new == 40_000_000
    assert note == (f"ΔF(C7ax − C7eq) drifts: {h1:.2f} kJ/mol on the first half of the frames and {h2:.2f} on "
                    f"the second, {moved['C7ax']['halves_z']:.1f} standard errors apart: going on to 40,000,000 steps")
    assert drift_extension(moved, 60_000_000, cap, 250)[0] == cap  # twice would pass the cap
    assert drift_extension(moved, 10_000_100, cap, 250)[0] == 20_000_250  # a multiple of 250
    assert drift_extension(moved, cap, cap, 250) == (cap, None)
    # two ΔF: the more drifting one is named
    both = {"aR": {**steady["C7ax"]}, "C7ax": moved["C7ax"]}
    assert "ΔF(C7ax − the reference state)" in drift_extension(both, steps, cap)[1]


def test_few_transitions_warning_names_what_to_change(tmp_path):
    """The production's few-transitions warning names the setting that would help: the
    production's length, the frozen stage's length or cap, and, when the frozen stage
    declined to go on because even its cap falls short at its rate, the CV itself."""
    from types import SimpleNamespace

    from cvflow import artifacts as art
    from cvflow.workflow import Workflow

    def hint(frozen_steps, min_transitions, note=None, steps=20_000_000, to=20_000_000):
        c = SimpleNamespace(production_frozen_steps=frozen_steps, production_frozen_min_transitions=min_transitions,
                            frozen_max_steps=lambda: 80_000_000)
        seg = tmp_path / "production" / "frozen" / "segment.json"
        if note is not None:
            art.write_json(seg, {"extension": {"checks": [{"steps": steps, "to": to, "note": note}]}})
        elif seg.exists():
            seg.unlink()
        return Workflow._sample_longer_hint(SimpleNamespace(cfg=SimpleNamespace(convergence=c), run_dir=tmp_path))

    assert hint(0, 0).endswith("(convergence.production_steps)")
    assert "convergence.production_frozen_steps, or production_frozen_min_transitions" in hint(20_000_000, 0)
    assert hint(20_000_000, 30).endswith("(convergence.production_frozen_max_steps)")
    declined = hint(20_000_000, 30, "3 transition(s) between C7eq and C7ax in 20,000,000 steps, fewer than 30; at "
                    "this rate 30 need about 200,000,000 steps, beyond the maximum length (80,000,000 steps): not extended")
    assert "the final CV may not separate these states" in declined and "production_frozen_max_steps" in declined
    at_cap = hint(20_000_000, 30, "29 transition(s) …; the stage is at its maximum length (80,000,000 steps): not extended",
                  steps=80_000_000, to=80_000_000)
    assert at_cap.endswith("(convergence.production_frozen_max_steps)")
    # an extension that went on and then fell short at the cap is not a declined one
    went_on = hint(20_000_000, 30, "12 transition(s) …; at this rate 30 need about 50,000,000 steps: going on to "
                   "60,000,000", to=60_000_000)
    assert went_on.endswith("(convergence.production_frozen_max_steps)")
