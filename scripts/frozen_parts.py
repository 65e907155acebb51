"""Where the weight of a frozen-bias stage lies, bias by bias: for a stage frozen again along
the way (``convergence.production_frozen_refreeze``), each frozen bias's frames, their share
of the exact (MBAR) weight, the MBAR free energy of the bias, where λ and ξ were, the span of
the bias (kJ/mol), the free energy A = max B − B that it assigns to its frames' λ bins
(median and 99th percentile): frames at a high A carry little weight, and (where recorded)
the level at which λ's weighted basins join and the fill as applied.

    python scripts/frozen_parts.py RUN_DIR [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def frozen_stage(run_dir: Path):
    """A finished run's frozen stage: its config, the frames' exact log weights and what
    the weighting says of itself, the frozen biases as applied (K, bins) and the record
    (``frozen_bias.npz``). Exits with a one-line error when there is no finished stage."""
    from cvflow.config import ConfigError, load_config
    from cvflow.dataset import stage_log_weights
    from cvflow.units import kT
    seg = run_dir / "production" / "frozen"
    if not (seg / "segment.json").exists() or not (run_dir / "config.resolved.yaml").exists():
        _fail(f"{run_dir}: no finished frozen stage ({seg / 'segment.json'} not found)")
    try:
        cfg = load_config(run_dir / "config.resolved.yaml")
    except ConfigError as e:
        _fail(str(e))
    logw, info = stage_log_weights(seg, 1.0 / kT(cfg.md.temperature), "frozen")
    rec = np.load(seg / "frozen_bias.npz")
    pots = np.asarray(rec["potentials"]) if "potentials" in rec else np.asarray(rec["potential"])[None]
    return cfg, logw, info, pots, rec


def _num(v) -> float | None:
    return float(v) if np.isfinite(v) else None


def parts(run_dir: Path) -> dict:
    from cvflow import artifacts as art
    seg = run_dir / "production" / "frozen"
    _, logw, info, pots, rec = frozen_stage(run_dir)
    starts = np.asarray(rec["starts"], np.int64) if "starts" in rec else np.zeros(1, np.int64)
    header, rows = art.read_csv(seg / "colvar.csv")
    col = lambda prefix: rows[:, [i for i, h in enumerate(header) if h.startswith(prefix)]]  # noqa: E731
    lam, xi, steps = col("lambda"), col("cv"), rows[:, header.index("step")]
    part = np.clip(np.searchsorted(starts, steps, side="left") - 1, 0, len(starts) - 1)
    nb, mins, widths = np.asarray(rec["bins"]), np.asarray(rec["mins"]), np.asarray(rec["widths"])
    cell = np.clip(np.floor((lam - mins) / widths).astype(np.int64), 0, nb - 1)
    flat = np.ravel_multi_index(tuple(cell.T), tuple(nb))
    w = np.exp(logw - logw.max())
    w /= w.sum()
    f = info.get("mbar_free_energies_kT", [0.0])
    # per freeze (where recorded): the weighted basins' cut, where they join, the fill as applied
    levels = np.asarray(rec["levels"]) if "levels" in rec else np.full((len(starts), 3), np.nan)
    out = []
    for k, s in enumerate(starts):
        m = part == k
        a = pots[k].max() - pots[k][flat[m]]
        out.append({"from_step": int(s), "frames": int(m.sum()), "weight_share": float(w[m].sum()),
                    "mbar_f_kT": float(f[k]), "lambda_mean": lam[m].mean(0).tolist(), "xi_mean": xi[m].mean(0).tolist(),
                    "bias_span_kJmol": float(np.ptp(pots[k])),
                    "basins_join_kJmol": _num(levels[k, 1]), "fill_applied_kJmol": _num(levels[k, 2]),
                    "a_at_frames_kJmol": {"q50": float(np.median(a)), "q99": float(np.quantile(a, 0.99))}})
        print(f"from step {s:>11,}: {m.sum():>6} frames, weight {w[m].sum():9.2g}, f {f[k]:6.1f} kT, "
              f"λ mean {np.round(lam[m].mean(0), 2)}, ξ mean {np.round(xi[m].mean(0), 2)}, "
              f"B spans {np.ptp(pots[k]):.0f} kJ/mol, A at its frames {np.median(a):.0f} (q99 {np.quantile(a, 0.99):.0f})"
              + (f", basins join at {levels[k, 1]:.3g} kJ/mol" if np.isfinite(levels[k, 1]) else ""))
    fill = float(rec["fill"]) if "fill" in rec else float("nan")
    return {"run": str(run_dir), "kish_ess": float(1.0 / np.sum(w ** 2)), "frames": int(len(w)),
            "fill_kJmol": None if np.isnan(fill) else fill, "parts": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--json")
    a = ap.parse_args()
    res = parts(a.run)
    print(f"Kish ESS {res['kish_ess']:.0f} of {sum(p['frames'] for p in res['parts'])} frames")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
