"""Checks of finished toy runs against exact results, shared by the slow tests and the
scripts that write docs/measurements (issue 19: the circle's two channels, Müller–Brown's
saddles). Exact free energies come from quadrature on a fine (x, y) grid."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
KB = 0.0083144626  # kJ/mol/K
CIRCLE_CONFIG = ROOT / "configs" / "circle-two-channels.yaml"
MB_CONFIG = ROOT / "configs" / "muller-brown.yaml"
#: the Müller–Brown saddle points (nm), found by Newton's method on the gradient
MONOTONIC_X = 0.95
MB_SADDLES = np.array([[-0.822, 0.624], [0.212, 0.293]])


def circle_potential(x, y, eps=0.1):
    """Double well on a circle, kJ/mol: minima (±1, 0), saddles (0, ±1) at 2 kJ/mol."""
    return 2 * y**2 + (x**2 + y**2 - 1) ** 2 / eps


_MB = dict(A=(-200, -100, -170, 15), a=(-1, -1, -6.5, 0.7), b=(0, 0, 11, 0.6), c=(-10, -10, -6.5, 0.7),
           x0=(1, 0, -0.5, -1), y0=(0, 0.5, 1.5, 1))


def muller_brown(x, y, scale=0.1):
    """The Müller–Brown potential times ``scale``, kJ/mol (x, y in nm)."""
    v = 0.0
    for A, a, b, c, x0, y0 in zip(*_MB.values()):
        v = v + A * np.exp(a * (x - x0) ** 2 + b * (x - x0) * (y - y0) + c * (y - y0) ** 2)
    return scale * v


def muller_brown_expression(scale=0.1) -> str:
    """The same potential as an OpenMM expression."""
    terms = [f"({A})*exp(({a})*(x-({x0}))^2 + ({b})*(x-({x0}))*(y-({y0})) + ({c})*(y-({y0}))^2)"
             for A, a, b, c, x0, y0 in zip(*_MB.values())]
    return f"{scale}*(" + " + ".join(terms) + ")"


def toy_cv(path):
    """A toy CV file as a function of (n, 2) points → the first CV component."""
    m = torch.jit.load(str(path))

    def cv(xy):
        pos = np.zeros((len(xy), 1, 3))
        pos[:, 0, :2] = xy
        with torch.no_grad():
            return m(torch.as_tensor(pos)).numpy()[:, 0]
    return cv


def toy_decoder(path):
    """A decoder file as a function of z (n,) → curves (n, K, 2)."""
    m = torch.jit.load(str(path))

    def dec(z):
        with torch.no_grad():
            return m(torch.as_tensor(np.asarray(z, np.float64).reshape(-1, 1))).numpy()
    return dec


def exact_along(potential, box, cv_fn, edges, beta, n=801):
    """Exact F along a CV: the Boltzmann-weighted histogram of ξ(x, y) over a fine grid of
    ``box`` = (xmin, xmax, ymin, ymax), kJ/mol, minimum 0 (NaN where empty)."""
    X, Y = np.meshgrid(np.linspace(box[0], box[1], n), np.linspace(box[2], box[3], n), indexing="ij")
    v = potential(X.ravel(), Y.ravel())
    w = np.exp(-beta * (v - v.min()))
    h, _ = np.histogram(cv_fn(np.column_stack([X.ravel(), Y.ravel()])), bins=edges, weights=w)
    with np.errstate(divide="ignore"):
        f = -np.log(h) / beta
    f[~np.isfinite(f)] = np.nan
    return f - np.nanmin(f)


def rms_kT(f_est, f_exact, beta, max_kT=5.0):
    """RMS difference in kT over bins with exact F ≤ max_kT, after the best constant shift."""
    m = np.isfinite(f_est) & np.isfinite(f_exact) & (f_exact * beta <= max_kT)
    d = f_est[m] - f_exact[m]
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)) * beta), int(m.sum())


def production_fes(run: Path, summary: dict):
    from cvflow.fes import read_fes
    c, f, _ = read_fes(run / summary["final_fes"])
    c = c[:, 0]
    w = c[1] - c[0]
    return c, f, np.concatenate([c - w / 2, [c[-1] + w / 2]])


def _monotonic(v) -> bool:
    d = np.diff(v)
    return bool(np.all(d > 0) or np.all(d < 0))


def circle_checks(run, temperature_K: float) -> dict:
    """Issue 19's two-channel checks of a finished circle run: convergence; each decoder's
    largest distance from the unit circle where the exact F along the CV is ≤ 5 kT; whether
    two decoders follow opposite channels (the sign of y where |x| < 0.5, over the whole
    grid); whether the CV is
    monotonic in x along both channels (the unit semicircles y ≥ 0 and y ≤ 0, |x| ≤ 0.95); the
    production free energy against the exact one (RMS in kT where F ≤ 5 kT)."""
    run = Path(run)
    s = json.loads((run / "summary.json").read_text())
    beta = 1.0 / (KB * temperature_K)
    cv = toy_cv(run / s["final_cv"])
    c, f, edges = production_fes(run, s)
    box = (-1.8, 1.8, -1.8, 1.8)
    exact = exact_along(circle_potential, box, cv, edges, beta)
    err, nbins = rms_kT(f, exact, beta)
    low = np.isfinite(exact) & (exact * beta <= 5)
    curves = toy_decoder(run / s["final_cv"].replace("cv.pt", "decoder.pt"))(c)  # (n, K, 2) over the grid
    stray = np.abs(np.linalg.norm(curves[low], axis=-1) - 1).max(axis=0)  # per decoder, where F ≤ 5 kT
    side = []
    for k in range(curves.shape[1]):
        mid = np.abs(curves[:, k, 0]) < 0.5
        side.append(float(np.sign(curves[mid, k, 1].mean())) if mid.any() else 0.0)
    # along each channel at steps of 0.01 nm in x; the channels merge in the wells at x = ±1,
    # where ξ folds (its derivative along the circle vanishes), so the check stops at |x| = 0.95
    xs = np.linspace(-MONOTONIC_X, MONOTONIC_X, 191)
    upper, lower = (cv(np.column_stack([xs, sg * np.sqrt(1 - xs**2)])) for sg in (1, -1))
    return {"converged": s["converged"], "iterations": len(s["iterations"]),
            "regscores": [it["regscore"] for it in s["iterations"]],
            "decoders": int(curves.shape[1]), "max_distance_from_circle": [round(float(v), 4) for v in stray],
            "channel_sign": side, "opposite_channels": bool(curves.shape[1] >= 2 and min(side) < 0 < max(side)),
            "monotonic_upper": _monotonic(upper), "monotonic_lower": _monotonic(lower),
            "fes_rms_kT": round(err, 4), "fes_bins": nbins, **reweighted_fes_rms(run, s, exact, beta),
            "wall_seconds": round(sum(it["wall_seconds"] for it in s["iterations"]) + s["production"]["wall_seconds"], 1)}


def reweighted_fes_rms(run: Path, summary: dict, exact: np.ndarray, beta: float) -> dict:
    """The RMS (kT, where F ≤ 5 kT) of the production's reweighted-histogram free energy
    (``final_fes_reweighted``) against ``exact`` on the same bins; {} for a run without it."""
    from cvflow.fes import read_fes
    if not summary.get("final_fes_reweighted"):
        return {}
    _, f, _ = read_fes(run / summary["final_fes_reweighted"])
    err, nbins = rms_kT(f, exact, beta)
    return {"fes_rms_kT_reweighted": round(err, 4), "fes_bins_reweighted": nbins}


def saddle_checks(run, temperature_K: float, saddles=MB_SADDLES) -> dict:
    """Issue 19's saddle checks of a finished Müller–Brown run: the distance from the
    decoded curve(s) of the final iteration (z over the production grid, every decoder) to
    each saddle point, in nm."""
    run = Path(run)
    s = json.loads((run / "summary.json").read_text())
    c, _, _ = production_fes(run, s)
    z = np.linspace(c[0], c[-1], 2001)
    curves = toy_decoder(run / s["final_cv"].replace("cv.pt", "decoder.pt"))(z).reshape(-1, 2)
    d = [float(np.min(np.linalg.norm(curves - p, axis=1))) for p in saddles]
    ts = [it.get("transition_states") for it in _train_infos(run, s)]
    return {"converged": s["converged"], "iterations": len(s["iterations"]),
            "saddle_distance": [round(v, 4) for v in d],
            "transition_state_frames": [t.get("frames") if t else None for t in ts],
            "wall_seconds": round(sum(it["wall_seconds"] for it in s["iterations"]) + s["production"]["wall_seconds"], 1)}


def _train_infos(run: Path, s: dict) -> list[dict]:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    return [stages.get(f"iter_{it['index']:03d}/train", {}) for it in s["iterations"]]


def run_toy(config: Path, out: Path, overrides: dict, threads: int = 1) -> float:
    """Run ``config`` with ``overrides`` (section → dict of keys, or a value) into ``out``,
    in a subprocess with ``threads`` threads, unless it has finished already; wall seconds."""
    if (out / "summary.json").exists():
        return 0.0
    d = yaml.safe_load(Path(config).read_text())
    for sec, key in (("system", "pdb"), ("bias", "cv")):  # relative to the config's folder
        if d.get(sec, {}).get(key):
            d[sec][key] = str((Path(config).parent / d[sec][key]).resolve())
    ts = d.get("model", {}).get("transition_states") or {}
    if ts.get("file"):
        ts["file"] = str((Path(config).parent / ts["file"]).resolve())
    for sec, vals in overrides.items():
        if isinstance(vals, dict):
            d.setdefault(sec, {})
            for k, v in vals.items():
                if isinstance(v, dict) and isinstance(d[sec].get(k), dict):
                    d[sec][k].update(v)
                else:
                    d[sec][k] = v
        else:
            d[sec] = vals
    d.setdefault("model", {})["threads"] = threads
    d.setdefault("convergence", {}).setdefault("bootstrap", {})["workers"] = 1
    d["output"] = str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(d, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "cvflow.cli", "run", str(cfg), "-q"]
                         + (["--resume"] if out.exists() and any(out.iterdir()) else []), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise ToyRunError(f"{cfg}: cvflow exited with status {res.returncode}: {last}")
    return time.time() - t0


class ToyRunError(RuntimeError):
    """A cvflow run of :func:`run_toy` failed; the message is its last line of stderr."""


def write_measurement(path, data: dict, summary: dict) -> None:
    """Print ``summary`` and write ``data`` as JSON to ``path`` (if given)."""
    print(json.dumps(summary, indent=1))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1) + "\n")


def run_pool(fn, jobs: list[tuple], workers: int, *shared) -> list:
    """``fn(*job, *shared)`` for every job in ``workers`` processes; a failed cvflow run ends
    the script with its one-line message (exit status 1), not a traceback."""
    import concurrent.futures as cf
    try:
        with cf.ProcessPoolExecutor(workers) as pool:
            return list(pool.map(fn, *zip(*jobs), *([x] * len(jobs) for x in shared)))
    except ToyRunError as e:
        sys.exit(f"error: {e}")
