#!/usr/bin/env python
"""Issue 19: what the multi-decoder objective prefers on one iteration's frames. Retrains
the network of iteration ITER of a finished circle run (scripts/two_channels.py) from
several seeds on that iteration's frames and weights (optionally the weights to the power
--alpha: 0 is unweighted), and prints, per start, the validation loss and the checks of
tests/toy_checks.py: CV monotonic in x along each channel, and the channel of each decoder.

    python scripts/two_channels_starts.py RUN_DIR ITER --starts 8 [--alpha 0.5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from toy_checks import MONOTONIC_X, _monotonic  # noqa: E402

from cvflow.config import config_from_dict  # noqa: E402
from cvflow.train import encode, train_model  # noqa: E402


def checks(res) -> tuple[bool, bool, list[float]]:
    xs = np.linspace(-MONOTONIC_X, MONOTONIC_X, 191)
    up, lo = (encode(res, np.column_stack([xs, sg * np.sqrt(1 - xs**2), np.zeros_like(xs)]))[:, 0] for sg in (1, -1))
    with torch.no_grad():
        c = res.model.decoder_module()(torch.linspace(-1, 1, 201)[:, None]).numpy() * res.std + res.mean
    mid = [np.abs(c[:, k, 0]) < 0.5 for k in range(c.shape[1])]
    side = [float(np.sign(c[m, k, 1].mean())) if m.any() else 0.0 for k, m in enumerate(mid)]
    return _monotonic(up), _monotonic(lo), side


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("iteration", type=int)
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=1.0, help="train on the weights to this power")
    args = ap.parse_args()
    d = args.run / f"iter_{args.iteration:03d}"
    for f in (args.run / "config.resolved.yaml", d / "md" / "traj.npy", d / "weights.npy"):
        if not f.is_file():
            print(f"error: {f} does not exist (a finished run of scripts/two_channels.py and one of its "
                  "iterations are needed)", file=sys.stderr)
            return 2
    cfg = config_from_dict(yaml.safe_load((args.run / "config.resolved.yaml").read_text())["config"])
    cfg.model.threads = 1
    x = np.load(d / "md" / "traj.npy").reshape(-1, 3).astype(np.float64)
    w = np.load(d / "weights.npy") ** args.alpha
    for s in range(args.starts):
        res = train_model(x, w, cfg.model, 1000 + s)
        mu, ml, side = checks(res)
        split = mu and ml and min(side) < 0 < max(side)
        print(f"iteration {args.iteration} start {s}: validation loss {res.best_val:.5f}, {res.epochs_run} epochs, "
              f"monotonic upper/lower {mu}/{ml}, decoder channels {side}{'  channel split' if split else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
