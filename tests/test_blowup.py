"""Blow-ups stop MD with an error that names the step; the last good state is kept."""
import json

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


def test_nan_cv_stops_with_error_and_keeps_state(tmp_path):
    cv = tmp_path / "nan.pt"
    torch.jit.script(NaNRight()).save(str(cv))
    cfg_path, _ = _config(tmp_path, checkpoint_interval=20, report_interval=10)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sample", str(cfg_path), "--cv", str(cv), "--out", str(out),
                                    "--steps", "50000", "--grid=-2,2,40", "-q"])
    blow = _check_kept_state(out, res)
    assert "non-finite CV value" in blow["reason"]


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
