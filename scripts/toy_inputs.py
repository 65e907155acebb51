#!/usr/bin/env python
"""Write the inputs of the toy configs into systems/toys/:

- x.pt and y.pt: ξ = x and ξ = y of the particle, cvflow-format TorchScript CVs (one
  identity layer), the simple first guesses that iteration 0 can be biased along;
- muller-brown-ts.txt: transition-state frames of the Müller–Brown potential (x, y in nm),
  200 around each saddle point: Boltzmann samples at kT = 1 kJ/mol within 0.1 nm of it, as
  a user would bring from, e.g., umbrella sampling at the saddles;
- circle-ts.txt: the same for the double well on a circle (configs/circle-two-channels.yaml),
  200 around each of its saddles (0, ±1), at kT = 0.5 kJ/mol (its 4-kT temperature).

    python scripts/toy_inputs.py
"""
import sys
from pathlib import Path

import numpy as np
import torch

from cvflow.export import export_cv
from cvflow.features import AlignedFeatures
from cvflow.models import MLP

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "systems" / "toys"
sys.path.insert(0, str(ROOT / "tests"))


def linear_cv(path: Path, row) -> None:
    enc = MLP([2, 1], ["identity"])
    with torch.no_grad():
        enc.net[0].weight.copy_(torch.as_tensor([row], dtype=torch.float32))
        enc.net[0].bias.zero_()
    feats = AlignedFeatures([0], np.zeros((1, 3)), align=False, components=[0, 1])
    export_cv(feats, np.zeros(2), np.ones(2), enc, 1, path, check_positions=np.random.default_rng(0).normal(size=(5, 1, 3)))


def circle_potential(x, y):
    """configs/circle-two-channels.yaml's V, kJ/mol."""
    return 2 * y ** 2 + (x ** 2 + y ** 2 - 1) ** 2 / 0.1


def saddle_frames(path: Path, potential, saddles, name: str, per_saddle: int = 200, radius: float = 0.1,
                  beta: float = 1.0) -> None:
    rng = np.random.default_rng(0)
    out = []
    for s in np.asarray(saddles, float):
        pts = np.zeros((0, 2))
        v_s = potential(*s)
        while len(pts) < per_saddle:
            p = s + rng.uniform(-radius, radius, (5000, 2))
            p = p[np.linalg.norm(p - s, axis=1) < radius]
            keep = rng.uniform(size=len(p)) < np.exp(-beta * (potential(p[:, 0], p[:, 1]) - v_s))
            pts = np.concatenate([pts, p[keep]])
        out.append(pts[:per_saddle])
    np.savetxt(path, np.concatenate(out), fmt="%.6f",
               header=f"x y (nm): {per_saddle} Boltzmann samples (kT = {1 / beta:g} kJ/mol) within {radius} nm of "
                      f"each {name} saddle point, scripts/toy_inputs.py")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    linear_cv(OUT / "x.pt", [1.0, 0.0])
    linear_cv(OUT / "y.pt", [0.0, 1.0])
    from toy_checks import MB_SADDLES, muller_brown
    saddle_frames(OUT / "muller-brown-ts.txt", muller_brown, MB_SADDLES, "Mueller-Brown")
    saddle_frames(OUT / "circle-ts.txt", circle_potential, [(0.0, 1.0), (0.0, -1.0)], "circle", beta=2.0)
    print(f"wrote x.pt, y.pt, muller-brown-ts.txt and circle-ts.txt in {OUT}")
