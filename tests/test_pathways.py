"""Issue 19's physical checks, one seed each (the tables over seeds and temperatures are
scripts/two_channels.py and scripts/saddles.py, numbers in docs/measurements and the README)."""
from __future__ import annotations

import pytest

from toy_checks import CIRCLE_CONFIG, KB, MB_CONFIG, circle_checks, run_toy, saddle_checks

pytestmark = pytest.mark.slow


def _assert_two_channels(r: dict) -> None:
    """The shape checks of circle_checks: converged, opposite channels, within 0.1 of the
    circle, monotonic in x along both channels."""
    assert r["converged"] and r["opposite_channels"]
    assert max(r["max_distance_from_circle"]) <= 0.1
    assert r["monotonic_upper"] and r["monotonic_lower"]


def test_two_decoders_follow_the_two_channels(tmp_path):
    """Circle double well at a 2-kT barrier, K = 2 (about 30 s): converged, the decoders on
    opposite channels and within 0.1 of the circle where F ≤ 5 kT, the CV monotonic in x
    along both, the production free energy (CZAR, and the reweighted histogram) within
    0.5 kT RMS of quadrature. With the current code all checks held in 3 of 5 seeds at 2 kT
    (the CZAR-era sweeps: 10 of 10), 3 of 5 at 4 kT and 1 of 5 at 8 kT, which the README
    reports rather than a test of one seed."""
    temperature = 2.0 / (2 * KB)
    run_toy(CIRCLE_CONFIG, tmp_path / "k2", {"seed": 1, "md": {"temperature": f"{temperature:.4f} K"}})
    r = circle_checks(tmp_path / "k2", temperature)
    print(r)
    _assert_two_channels(r)
    assert r["fes_rms_kT"] <= 0.5
    assert r["fes_rms_kT_reweighted"] <= 0.5


def test_saddle_frames_put_the_two_decoders_on_the_channels_at_8_kT(tmp_path):
    """Circle double well at an 8-kT barrier, K = 2, with systems/toys/circle-ts.txt (200
    Boltzmann samples around each saddle) at weight 0.1 (about 30 s): converged, the
    decoders on opposite channels within 0.1 of the circle, the CV monotonic in x along
    both, and the production's reweighted-histogram free energy within 0.5 kT RMS of
    quadrature. In the sweep of 5 seeds all of this held in 5 of 5 (without the frames:
    1 of 5); the CZAR free energy is 0.5 kT off in the fold's end bins in one of them."""
    temperature = 2.0 / (8 * KB)
    ts = {"source": "file", "file": str(CIRCLE_CONFIG.parent.parent / "systems" / "toys" / "circle-ts.txt"),
          "weight": 0.1}
    run_toy(CIRCLE_CONFIG, tmp_path / "ts", {"seed": 4, "md": {"temperature": f"{temperature:.4f} K"},
                                             "model": {"transition_states": ts}})
    r = circle_checks(tmp_path / "ts", temperature)
    print(r)
    _assert_two_channels(r)
    assert r["fes_rms_kT_reweighted"] <= 0.5


def test_transition_states_pull_the_curve_through_both_saddles(tmp_path):
    """Müller–Brown with the shipped transition-state file (about 70 s): the decoded curve
    passes within 0.05 nm of both saddle points."""
    run_toy(MB_CONFIG, tmp_path / "ts", {"seed": 2})
    r = saddle_checks(tmp_path / "ts", 120.27)
    print(r)
    assert r["converged"]
    assert max(r["saddle_distance"]) <= 0.05
