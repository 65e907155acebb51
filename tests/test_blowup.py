"""Blow-ups stop MD with an error that names the step; the last good state is kept."""
import json

import pytest

import numpy as np
import torch
import yaml
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ES_CONFIG


class NaNRight(torch.nn.Module):
    """ξ = x for x < −0.6, NaN beyond: the particle soon crosses."""

    def forward(self, pos):
        x = pos[0, 0:1]
        return torch.where(x < -0.6, x, torch.full_like(x, float("nan")))


def _config(tmp_path, **md):
    cfg = yaml.safe_load(ES_CONFIG.read_text())
    cfg["md"].update(md)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p, cfg


def _check_kept_state(out, res):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "at step" in res.output
    assert not (out / "segment.json").exists()
    blow = json.loads((out / "blowup.json").read_text())
    ckpt = json.loads((out / "ckpt" / "progress.json").read_text())
    # the checkpoint on disk is from before the blow-up, and it is a loadable OpenMM checkpoint
    assert 0 < ckpt["step"] == blow["last_checkpoint_step"] < blow["step"]
    assert blow["reason"] in res.output and f"checkpoint at step {ckpt['step']}" in res.output
    assert (out / "ckpt" / ckpt["chk"]).stat().st_size > 0
    frames = np.load(sorted((out / "chunks").glob("frames_*.npy"))[-1])
    assert np.isfinite(frames).all()
    return blow


def _sample_nan_cv(tmp_path):
    """``cvflow sample`` biased on :class:`NaNRight`, a checkpoint every 20 steps: (out, result)."""
    cv = tmp_path / "nan.pt"
    torch.jit.script(NaNRight()).save(str(cv))
    cfg_path, _ = _config(tmp_path, checkpoint_interval=20, report_interval=10)
    out = tmp_path / "out"
    return out, CliRunner().invoke(main, ["sample", str(cfg_path), "--cv", str(cv), "--out", str(out),
                                          "--steps", "50000", "--grid=-2,2,40", "-q"])


def test_nan_cv_stops_with_error_and_keeps_state(tmp_path):
    out, res = _sample_nan_cv(tmp_path)
    blow = _check_kept_state(out, res)
    assert "non-finite CV value" in blow["reason"]


def test_a_recovery_keeps_the_cv_rows_of_the_frames_before_its_checkpoint(tmp_path):
    """After each recovery the stage rewrites the checkpoint it restarted from (with the
    softer coupling). The CV rows gathered up to that checkpoint must survive it: every
    saved frame has its colvar row (a rewrite once emptied the rows, and the finished stage
    had fewer colvar rows than frames). The row of the frame at a checkpoint's step is
    recorded at the next step, so it is in the next chunk: the last frame has none yet."""
    out, res = _sample_nan_cv(tmp_path)
    assert res.exit_code == 1 and "recoveries" in res.output, res.output
    chunks = out / "chunks"
    frame_steps = np.concatenate([np.load(f) for f in sorted(chunks.glob("steps_*.npy"))]).astype(np.int64)
    row_steps = np.concatenate([np.load(f).reshape(-1, 3)[:, 0] for f in sorted(chunks.glob("colvar_*.npy"))])
    assert len(frame_steps) >= 4
    assert set(frame_steps[:-1]) <= set(row_steps.astype(np.int64))


def test_nan_potential_stops_with_error_and_keeps_state(tmp_path, x_cv):
    """A potential that turns NaN for x > −0.6: non-finite energy or positions, caught.

    (The NaN must depend on x: OpenMM's expression parser hangs constant-folding ``sqrt(-1)``.)"""
    cfg_path, cfg = _config(tmp_path, checkpoint_interval=20, report_interval=10)
    cfg["system"]["potential"] = f"({cfg['system']['potential']}) + select(step(x + 0.6), sqrt(-1 - x^2), 0)"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sample", str(cfg_path), "--cv", str(x_cv), "--out", str(out),
                                    "--steps", "50000", "--grid=-2,2,40", "-q"])
    blow = _check_kept_state(out, res)
    assert "non-finite" in blow["reason"]


def test_stiff_coupling_blows_up_and_recovers_with_a_softer_one(tmp_path, es_config):
    """κ = 10⁷ kJ/mol/cv² on ξ = (x, y) of a 1-amu particle at 20 fs: the coupling's period
    (2 fs) is shorter than the time step, so the first steps blow up for sure. The stage
    restarts from its step-0 checkpoint with κ × 10⁻⁴ (period 0.2 ps) and finishes; the
    recovery is recorded, and the statistics of the blown-up steps are not kept.
    Then the same stage, stopped after the recovery and resumed, ends bit for bit the same."""
    from cvflow.config import GridDim
    from cvflow.fes import CZARStats, Grid
    from cvflow.sampler import run_segment
    from cvflow.stop import _STOP
    from cvflow.system import build_system
    from conftest import linear_toy_cv
    cfg = es_config.model_copy(deep=True)
    cfg.bias.kappa = 1e7
    cfg.md.recovery.kappa_factor = 1e-4
    cfg.md.checkpoint_interval = 1000
    bundle = build_system(cfg.system)
    cv = linear_toy_cv(tmp_path / "xy.pt", [[1.0, 0.0], [0.0, 1.0]])
    grid = Grid.from_dims([GridDim(min=-2.0, max=2.0, bins=20), GridDim(min=-1.2, max=2.8, bins=20)])
    res = run_segment(cfg, bundle, tmp_path / "a", 6000, seed=3, cv_path=cv, grid=grid)
    assert len(res.recoveries) == 1
    rec = res.recoveries[0]
    assert rec["kappa_before"] == pytest.approx(1e7) and rec["kappa_after"] == pytest.approx(1e3)
    assert rec["resumed_from_step"] == 0 and rec["step"] == 0
    assert json.loads((tmp_path / "a" / "segment.json").read_text())["recoveries"] == res.recoveries
    stats = CZARStats.load(tmp_path / "a" / "czar.npz")
    assert stats.count.sum() == 6000  # only the steps after the restart are counted
    assert np.isfinite(np.load(tmp_path / "a" / "traj.npy")).all()

    def stop_after(step, total):
        if step >= 3000:
            _STOP["flag"] = True
    from cvflow.sampler import StopRequested
    try:
        with pytest.raises(StopRequested):
            run_segment(cfg, bundle, tmp_path / "b", 6000, seed=3, cv_path=cv, grid=grid, progress=stop_after)
    finally:
        _STOP["flag"] = False
    res_b = run_segment(cfg, bundle, tmp_path / "b", 6000, seed=3, cv_path=cv, grid=grid)
    assert res_b.recoveries == res.recoveries
    for name in ("traj.npy", "frame_steps.npy"):
        assert np.array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name))
    a, b = CZARStats.load(tmp_path / "a" / "czar.npz"), CZARStats.load(tmp_path / "b" / "czar.npz")
    assert np.array_equal(a.count, b.count) and np.array_equal(a.sum_coupling, b.sum_coupling)


def test_recovery_off_stops_at_the_first_blow_up(tmp_path, es_config):
    from cvflow.bias.native import BlowUpError
    from cvflow.config import GridDim
    from cvflow.fes import Grid
    from cvflow.sampler import run_segment
    from cvflow.system import build_system
    from conftest import linear_toy_cv
    cfg = es_config.model_copy(deep=True)
    cfg.bias.kappa = 1e7
    cfg.md.recovery.attempts = 0
    bundle = build_system(cfg.system)
    cv = linear_toy_cv(tmp_path / "xy.pt", [[1.0, 0.0], [0.0, 1.0]])
    grid = Grid.from_dims([GridDim(min=-2.0, max=2.0, bins=20), GridDim(min=-1.2, max=2.8, bins=20)])
    with pytest.raises(BlowUpError, match=r"md: .* at step \d+.*checkpoint at step 0"):
        run_segment(cfg, bundle, tmp_path / "a", 6000, seed=3, cv_path=cv, grid=grid)
    assert json.loads((tmp_path / "a" / "blowup.json").read_text())["last_checkpoint_step"] == 0
