"""Issue 20's toy targets for Boltzmann generators, over seeds, against quadrature.

For each system (the double well of configs/bg-double-well.yaml and Müller-Brown x 0.1 of
configs/bg-muller-brown.yaml) and each seed: ``cvflow generate`` (KL + ML, trained on a short
MD run in one state plus a few frames of another), then

- the reweighted ΔF between the states against exact quadrature on a fine grid;
- Kish's ESS of the importance weights;
- what plain MD of the same energy-evaluation budget gives (one force evaluation per step:
  an unbiased Langevin run of that many steps from the same start, ΔF from state counts);
- Müller-Brown: the Jensen-Shannon divergence between the reweighted samples' 2-D histogram
  and the exact density on the same bins.

    python scripts/bg_toys.py [--seeds 1 2 3 4 5] [--systems double-well muller-brown]
        [--out docs/measurements/bg-toys-cpu-vm.json] [--work /tmp/bg-toys]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvflow.config import load_config  # noqa: E402
from cvflow.generate import GenerateRun, prepare_generate_dir  # noqa: E402
from cvflow.progress import setup_logging  # noqa: E402
from cvflow.sampler import derive_seed, load_frames, run_segment  # noqa: E402
from cvflow.system import build_system  # noqa: E402
from cvflow.units import KB  # noqa: E402

CONFIGS = {"double-well": ROOT / "configs" / "bg-double-well.yaml",
           "muller-brown": ROOT / "configs" / "bg-muller-brown.yaml"}


def toy_energy_grid(bundle, xs, ys):
    """U (kJ/mol) on the grid xs × ys through OpenMM, the toy's own evaluator."""
    from cvflow.energy import OpenMMEnergy
    bridge = OpenMMEnergy(bundle)
    xx, yy = np.meshgrid(xs, ys, indexing="ij")
    e, _ = bridge(np.stack([xx.ravel(), yy.ravel()], 1))
    return e.reshape(xx.shape)


def in_state(xy, box):
    inside = np.ones(len(xy), bool)
    for c, b in ((0, box.x), (1, box.y)):
        if b is not None:
            inside &= (xy[:, c] >= b[0]) & (xy[:, c] <= b[1])
    return inside


def exact(cfg, bundle, lo, hi, n=(1201, 1001)):
    """Exact state free energies (kT, relative to the first state) and the density grid."""
    xs, ys = np.linspace(lo[0], hi[0], n[0]), np.linspace(lo[1], hi[1], n[1])
    e = toy_energy_grid(bundle, xs, ys)
    kT = KB * cfg.md.temperature
    p = np.exp(-(e - e.min()) / kT)
    xx, yy = np.meshgrid(xs, ys, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    names = list(cfg.generator.states)
    pop = {k: p.ravel()[in_state(pts, cfg.generator.states[k])].sum() for k in names}
    return {k: float(-np.log(pop[k] / pop[names[0]])) for k in names[1:]}, (xs, ys, p)


def js_divergence(p, q):
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = lambda a, b: np.nansum(np.where(a > 0, a * np.log(a / b), 0.0))  # noqa: E731
    return float(0.5 * kl(p, m) + 0.5 * kl(q, m))


def density_check(samples, logw, grid, lo, hi, bins=(50, 40), figure=None, kT=1.0):
    """JS divergence (nats) between the reweighted 2-D histogram and the exact density
    (and, with ``figure``, both drawn side by side as −ln p in kT)."""
    xs, ys, p = grid
    ex = [np.linspace(lo[0], hi[0], bins[0] + 1), np.linspace(lo[1], hi[1], bins[1] + 1)]
    w = np.exp(logw - logw[np.isfinite(logw)].max())
    w[~np.isfinite(w)] = 0
    h, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], ex, weights=w)
    xx, yy = np.meshgrid(xs, ys, indexing="ij")
    ref, _, _ = np.histogram2d(xx.ravel(), yy.ravel(), ex, weights=p.ravel())
    js = js_divergence(h, ref)
    if figure is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, hist, title in ((axes[0], ref, "exact density"), (axes[1], h, f"reweighted samples (JS {js:.4f})")):
            with np.errstate(divide="ignore"):
                f = -np.log(hist / hist.sum())
            f -= f[np.isfinite(f)].min()
            im = ax.imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower", aspect="auto", vmax=14,
                           extent=(lo[0], hi[0], lo[1], hi[1]), cmap="viridis")
            ax.set_title(title)
            ax.set_xlabel("x (nm)")
        axes[0].set_ylabel("y (nm)")
        fig.colorbar(im, ax=axes, label="−ln p (kT)")
        fig.savefig(figure, dpi=100)
        plt.close(fig)
    return js


def plain_md(cfg, bundle, steps, seed, work):
    """ΔF (kT) between the states from an unbiased run of ``steps`` steps from system.start."""
    seg = work / "md"
    shutil.rmtree(seg, ignore_errors=True)
    run_segment(cfg, bundle, seg, int(steps), derive_seed(seed, 77), engine="none")
    xy = load_frames(seg, bundle)[:, 0, :2]
    names = list(cfg.generator.states)
    n = {k: int(in_state(xy, cfg.generator.states[k]).sum()) for k in names}
    with np.errstate(divide="ignore"):
        df = {k: float(-np.log(n[k] / n[names[0]])) if n[k] and n[names[0]] else None for k in names[1:]}
    return {"steps": int(steps), "frames": int(len(xy)), "frames_per_state": n, "delta_f_kT": df}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--systems", nargs="+", default=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "measurements" / "bg-toys-cpu-vm.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bg-toys"))
    args = ap.parse_args()
    setup_logging(-1)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["script"] = "scripts/bg_toys.py"
    for name in args.systems:
        cfg = load_config(CONFIGS[name])
        bundle = build_system(cfg.system)
        lo, hi = ((-3.2, -4.5), (3.2, 4.5)) if name == "double-well" else ((-1.8, -0.6), (1.3, 2.2))
        ref, grid = exact(cfg, bundle, lo, hi)
        rows = result.get(name, {}).get("seeds", {})
        for seed in args.seeds:
            cfg.seed = seed
            work = args.work / name / f"seed{seed}"
            shutil.rmtree(work, ignore_errors=True)
            prepare_generate_dir(cfg, work / "gen", False)
            t0 = time.perf_counter()
            info = GenerateRun(cfg, work / "gen").run()
            wall = time.perf_counter() - t0
            st = info["states"]["delta_f_kT"]
            row = {"delta_f_kT": {k: v["value"] for k, v in st.items()},
                   "error_kT": {k: v["error"] for k, v in st.items()},
                   "deviation_kT": {k: st[k]["value"] - ref[k] for k in ref},
                   "ess_fraction": info["ess_fraction"], "samples": info["samples"],
                   "energy_evaluations": info["energy_evaluations"], "wall_s": wall}
            if name == "muller-brown":
                samples = np.load(work / "gen" / "samples.npy")
                fig = ROOT / "docs" / "img" / "bg-muller-brown-density.png" if seed == args.seeds[0] else None
                row["js_divergence_2d"] = density_check(samples, np.load(work / "gen" / "log_weights.npy"),
                                                        grid, lo, hi, figure=fig)
            row["plain_md_same_budget"] = plain_md(cfg, bundle, info["energy_evaluations"], seed, work)
            rows[str(seed)] = row
            print(name, seed, json.dumps({k: row[k] for k in ("deviation_kT", "ess_fraction")}), f"{wall:.0f} s",
                  flush=True)
        devs = [abs(d) for r in rows.values() for d in r["deviation_kT"].values()]
        result[name] = {"config": str(CONFIGS[name].relative_to(ROOT)), "exact_delta_f_kT": ref, "seeds": rows,
                        "max_abs_deviation_kT": max(devs),
                        "within_0p2_kT": f"{sum(all(abs(d) < 0.2 for d in r['deviation_kT'].values()) for r in rows.values())}"
                                         f"/{len(rows)}",
                        "min_ess_fraction": min(r["ess_fraction"] for r in rows.values())}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: {kk: v[kk] for kk in ("max_abs_deviation_kT", "within_0p2_kT", "min_ess_fraction")}
                      for k, v in result.items() if isinstance(v, dict) and "seeds" in v}, indent=1))


if __name__ == "__main__":
    main()
