"""Reading a run directory back: status tables, free-energy plots, the HTML report, export.

Everything here reads files that the workflow wrote (``manifest.json``, ``iter_*/metrics.json``,
``*/fes.csv``, ``training.csv``, ``weights.npy``, ``summary.json``); nothing is recomputed
except CV values on saved frames for the CV maps. It works on a finished run and on one that
is still running or was killed (stages not reached are shown as missing).
"""
from __future__ import annotations

import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import artifacts as art
from .config import ConfigError
from .fes import read_fes
from .states import delta_f_text, population_text


@dataclass
class IterationRecord:
    index: int
    dir: Path
    frames: int | None = None
    steps: int | None = None
    ess: float | None = None
    regscore: float | None = None
    threshold: float | None = None
    quantile_below_floor: float | None = None  # the bootstrap quantile, when the floor replaced it
    bootstrap: list = field(default_factory=list)
    converged: bool | None = None
    wall_seconds: float = 0.0
    fes: Path | None = None
    cv: Path | None = None
    frames_so_far: int | None = None  # an MD stage under way or stopped: the frames it saved
    not_counted: str | None = None  # why a regscore that reached the threshold was not a pass
    confirmation: str | None = None  # awaiting, confirmed or refuted (convergence.confirm)


@dataclass
class RunRecord:
    dir: Path
    config: dict
    current: str | None
    iterations: list[IterationRecord]
    summary: dict | None
    production_fes: Path | None

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.current is None

    @property
    def stage(self) -> str:
        if self.finished:
            return "finished" + (" (converged)" if self.summary.get("converged") else " (max_iterations reached)")
        live = art.liveness(self.dir)
        if self.current:
            return f"in {self.current}: " + (live or "stopped (no process is working on it; --resume continues it)")
        return live or "not started"

    @property
    def kT(self) -> float:
        from .units import kT, parse_quantity
        if "md" not in self.config:
            raise ConfigError(f"{self.dir}: no config.resolved.yaml (its temperature sets the kT of the plots)")
        return kT(parse_quantity(self.config["md"]["temperature"], "temperature"))


def run_config(run: RunRecord):
    """The run's recorded config, its input files where they are now: where one has moved
    since, the run directory's copy (``inputs/``)."""
    from .config import config_from_dict, with_kept_inputs
    return with_kept_inputs(config_from_dict(run.config, f"{run.dir}/config.resolved.yaml"), run.dir)


def load_run(run_dir) -> RunRecord:
    """Read a run directory; a clear error names what is missing."""
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        raise ConfigError(f"{run_dir}: not a cvflow run directory (no manifest.json)")
    man = art.read_json(manifest)
    import yaml
    resolved = run_dir / "config.resolved.yaml"
    config = yaml.safe_load(resolved.read_text())["config"] if resolved.exists() else {}
    stages = man.get("stages", {})
    its = []
    for d in sorted(run_dir.glob("iter_[0-9][0-9][0-9]")):
        i = int(d.name.split("_")[1])
        rec = IterationRecord(i, d)
        md = stages.get(f"{d.name}/md")
        if md:
            rec.frames, rec.steps = md.get("frames"), md.get("steps")
            rec.wall_seconds += md.get("wall_seconds", 0.0)
            if md.get("fes"):
                rec.fes = run_dir / md["fes"]
        elif (d / "md").is_dir():
            from .sampler import frames_so_far
            rec.frames_so_far = frames_so_far(d / "md")
        tr = stages.get(f"{d.name}/train")
        if tr:
            rec.ess = tr.get("ess")
            rec.wall_seconds += tr.get("wall_seconds", 0.0)
            rec.cv = run_dir / tr["cv"]
        ck = stages.get(f"{d.name}/check")
        if ck:
            rec.regscore, rec.threshold = ck.get("regscore"), ck.get("threshold")
            rec.bootstrap = ck.get("bootstrap_scores") or []
            if ck.get("threshold_floored"):
                rec.quantile_below_floor = ck.get("bootstrap_quantile")
            rec.converged = ck.get("converged")
            rec.not_counted = ck.get("not_counted")
            rec.confirmation = ck.get("confirmation")
            rec.wall_seconds += ck.get("wall_seconds", 0.0)
        its.append(rec)
    summary = art.read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else None
    from .workflow import production_md_dir
    prod = production_md_dir(run_dir) / "fes.csv"
    return RunRecord(run_dir, config, man.get("current"), its, summary, prod if prod.exists() else None)


def frames_text(r: IterationRecord) -> str:
    """An iteration's frames: the count, "N so far" while (or where) its MD stopped short, or "-"."""
    if r.frames is None:
        return f"{r.frames_so_far} so far" if r.frames_so_far else "-"
    return str(r.frames)


def converged_text(r: IterationRecord) -> str:
    """"yes", "no", "-" before the check, or "no (not counted: …)" for a regscore that reached
    the threshold but was not a pass (a warm start from a network trained on unbiased frames)."""
    if r.converged is None:
        return "-"
    if r.converged:
        return "yes (confirmed)" if r.confirmation == "confirmed" else "yes"
    if r.confirmation == "awaiting":
        return "no (passed; one more iteration to confirm)"
    if r.confirmation == "refuted":
        return "no (does not confirm the stop)"
    return f"no (not counted: {r.not_counted})" if r.not_counted else "no"


def status_table(run: RunRecord):
    """A rich Table of the iterations so far."""
    from rich.table import Table
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    t = Table(title=f"{run.dir}: {run.stage}")
    for col in ("iteration", "frames", "ESS", "regscore", "threshold", "converged", "wall time (s)"):
        t.add_column(col, justify="right")
    for r in run.iterations:
        t.add_row(str(r.index), frames_text(r), fmt(r.ess, ".0f"), fmt(r.regscore, ".4f"),
                  fmt(r.threshold, ".4f") + (" (floor)" if r.quantile_below_floor is not None else ""),
                  converged_text(r),
                  f"{r.wall_seconds:.1f}")
    for label, frames, wall in production_rows(run):
        t.add_row(label, fmt(frames, "d"), "-", "-", "-", "-", f"{wall:.1f}")
    return t


def production_rows(run: RunRecord) -> list[tuple[str, int | None, float]]:
    """(label, frames, wall seconds) of the production's stages: its eABF stage, then the
    stage under the frozen bias when there is one (``convergence.production_frozen_steps``)."""
    p = (run.summary or {}).get("production")
    if not p:
        return []
    rows = [("production", p.get("frames"), p.get("wall_seconds", 0.0))]
    if p.get("frozen"):
        fz = p["frozen"]
        ext = fz.get("extension") or {}
        label = "frozen bias" + (", extended" if ext.get("steps", 0) > ext.get("from_steps", 0) else "")
        rows.append((label, fz.get("frames"), fz.get("wall_seconds", 0.0)))
    return rows


WEIGHTS_TEXT = {
    "frozen": "the stage under the frozen bias, with its exact weights exp(βV)",
    "extended": "reweighted by the extended variable, exp(−βA(λ))/ρ̃(λ)",
    "czar": "reweighted by the CZAR free energy, exp(−βF(ξ))/ρ̃(ξ)",
    "unbiased": "unbiased, every frame alike",
}


def production_weights(run: RunRecord) -> str | None:
    """How the production's frames were weighed (``production/weights.npy``): extended,
    czar, frozen or unbiased, as ``summary.json`` records it (``production_analysis``), or,
    for a run written before that was recorded, as its ``production/states.json`` does."""
    name = ((run.summary or {}).get("production_analysis") or {}).get("weights_estimator")
    states = run.dir / "production" / "states.json"
    if name is None and states.exists():
        name = art.read_json(states).get("weights")
    return name


def latest_states(run: RunRecord) -> tuple[str, dict | None]:
    """The states' free energies of production when it has them, else of the last iteration."""
    if run.summary and run.summary.get("states"):
        return "production", run.summary["states"]
    stages = art.read_json(run.dir / "manifest.json").get("stages", {}) if (run.dir / "manifest.json").exists() else {}
    for r in reversed(run.iterations):
        st = (stages.get(f"iter_{r.index:03d}/train") or {}).get("states")
        if st:
            return f"iteration {r.index}", st
    return "", None


# -- plots ---------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def phi_psi_degrees(traj) -> tuple[np.ndarray, np.ndarray] | None:
    """φ and ψ (degrees) of the first residue that has both, per frame; None if none has."""
    import mdtraj as md
    phi, psi = md.compute_phi(traj)[1], md.compute_psi(traj)[1]
    if phi.shape[1] == 0 or psi.shape[1] == 0:
        return None
    return np.degrees(phi[:, 0]), np.degrees(psi[:, 0])


def ramachandran_panel(fig, ax, hist: np.ndarray, kT: float, title: str, vmax: float = 40.0) -> None:
    """Draw −kT ln(hist) (a (φ, ψ) histogram over [−180, 180]², rows φ) on ``ax``, from 0,
    the colour scale up to ``vmax`` kJ/mol (or the largest value, if lower)."""
    with np.errstate(divide="ignore"):
        f = -kT * np.log(hist / hist.sum())
    f -= f[np.isfinite(f)].min()
    f = np.where(np.isfinite(f), f, np.nan)
    im = ax.imshow(f.T, origin="lower", extent=(-180, 180, -180, 180), cmap="viridis",
                   vmax=min(vmax, float(np.nanmax(f))))
    fig.colorbar(im, ax=ax, label="free energy (kJ/mol)")
    ax.set_xlabel("φ (degrees)")
    ax.set_ylabel("ψ (degrees)")
    ax.set_title(title)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_fes(fes_csv: Path, kT: float, out: Path, title: str = "") -> Path:
    """The free energy in kJ/mol, with a second scale in kT. 1-D: a curve; 2-D: filled contours."""
    plt = _plt()
    centres, f, count = read_fes(fes_csv)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if centres.shape[1] == 1:
        ax.plot(centres[:, 0], f, "-", color="C0")
        ax.set_xlabel("CV 1")
        ax.set_ylabel("free energy (kJ/mol)")
        sec = ax.secondary_yaxis("right", functions=(lambda v: v / kT, lambda v: v * kT))
        sec.set_ylabel("free energy (kT)")
    else:
        xs, ys = np.unique(centres[:, 0]), np.unique(centres[:, 1])
        grid = f.reshape(len(xs), len(ys)).T
        finite = grid[np.isfinite(grid)]
        top = min(float(finite.max()) if finite.size else 1.0, 15 * kT)
        cs = ax.contourf(xs, ys, np.where(np.isfinite(grid), np.minimum(grid, top), np.nan),
                         levels=np.linspace(0, top, 16), cmap="viridis")
        cb = fig.colorbar(cs, ax=ax, pad=0.16)
        cb.set_label("free energy (kJ/mol)")
        sec = cb.ax.secondary_yaxis("left", functions=(lambda v: v / kT, lambda v: v * kT))
        sec.set_ylabel("kT")
        ax.set_xlabel("CV 1")
        ax.set_ylabel("CV 2")
    ax.set_title(title or fes_csv.parent.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def fes_path(run: RunRecord, iteration: int | None, reweighted: bool = False) -> tuple[Path, str]:
    """The fes.csv of an iteration, or of production (default; else the last biased iteration);
    with ``reweighted``, the production's reweighted histogram (``fes_reweighted.csv``)."""
    if reweighted:
        path = run.dir / "production" / "fes_reweighted.csv"
        if iteration is not None or not path.exists():
            raise ConfigError(f"{run.dir}: --reweighted is the production's fes_reweighted.csv, which "
                              + ("has no iteration" if iteration is not None else "this run does not have (yet)"))
        return path, "production, reweighted histogram"
    if iteration is not None:
        recs = [r for r in run.iterations if r.index == iteration]
        if not recs:
            raise ConfigError(f"{run.dir}: there is no iteration {iteration}")
        if recs[0].fes is None or not recs[0].fes.exists():
            raise ConfigError(f"{run.dir}: iteration {iteration} has no free energy "
                              "(iteration 0 is unbiased unless bias.cv is given; or it has not finished)")
        return recs[0].fes, f"iteration {iteration}"
    if run.production_fes is not None:
        return run.production_fes, "production"
    for r in reversed(run.iterations):
        if r.fes is not None and r.fes.exists():
            return r.fes, f"iteration {r.index}"
    raise ConfigError(f"{run.dir}: no free energy has been computed yet")


def _plot_convergence(run: RunRecord, out: Path) -> Path | None:
    recs = [r for r in run.iterations if r.regscore is not None]
    if not recs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 3.8))
    ax.plot([r.index for r in recs], [r.regscore for r in recs], "o-", label=r"regscore($\xi_{i-1}$, $\xi_i$)")
    ax.plot([r.index for r in recs], [r.threshold for r in recs], "s--", color="C3", label="threshold")
    for r in recs:
        if r.bootstrap:
            ax.plot(np.full(len(r.bootstrap), r.index) + 0.08, r.bootstrap, ".", color="0.5", alpha=0.7)
    ax.plot([], [], ".", color="0.5", label="bootstrap R² (pairs of resampled fits)")
    low = [r for r in recs if r.quantile_below_floor is not None]
    if low:
        ax.plot([r.index for r in low], [r.quantile_below_floor for r in low], "x", color="C3",
                label="bootstrap quantile below the floor")
    ax.set_xlabel("iteration")
    ax.set_ylabel("R²")
    ax.set_xticks([r.index for r in recs])
    ax.set_xlim(recs[0].index - 0.5, recs[-1].index + 0.5)
    for r in recs:  # the values themselves: 0.974 against 0.989 must be readable
        ax.annotate(f"{r.regscore:.3f}", (r.index, r.regscore), textcoords="offset points", xytext=(-6, 6),
                    fontsize=7, ha="right")
        ax.annotate(f"{r.threshold:.3f}", (r.index, r.threshold), textcoords="offset points", xytext=(6, -10),
                    fontsize=7, color="C3")
    # zoom where the values are (a fixed 0–1 axis hides the differences that decide convergence)
    vals = ([r.regscore for r in recs] + [r.threshold for r in recs] + [b for r in recs for b in r.bootstrap]
            + [r.quantile_below_floor for r in low])
    lo, hi = min(vals), max(vals)
    pad = max(0.005, 0.08 * (hi - lo))
    ax.set_ylim(lo - pad, min(1.0, hi) + pad)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over points
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_training(run: RunRecord, out: Path) -> Path | None:
    curves = [(r.index, art.read_csv(r.dir / "training.csv")[1]) for r in run.iterations
              if (r.dir / "training.csv").exists()]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, data in curves:
        ax.plot(data[:, 0], data[:, 1], "-", color=f"C{i % 10}", label=f"iter {i} train")
        ax.plot(data[:, 0], data[:, 2], "--", color=f"C{i % 10}", label=f"iter {i} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted reconstruction loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_weights(run: RunRecord, out: Path) -> Path | None:
    recs = [r for r in run.iterations if (r.dir / "weights.npy").exists() and r.fes is not None]
    if not recs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in recs:
        w = np.load(r.dir / "weights.npy")
        left_out = int(np.sum(w <= 0))  # frames with no free energy (outside the main region)
        note = f", {left_out} left out" if left_out else ""
        ax.hist(np.log10(w[w > 0] * len(w)), bins=40, histtype="step",
                label=f"iter {r.index}: ESS {r.ess:.0f} / {len(w)}{note}")
    ax.set_xlabel("log10(n · w)   (0: a uniform weight)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _final_frames(run: RunRecord, bundle, with_atoms: bool = False):
    """The frames of the last finished MD stage (production first); with ``with_atoms``,
    also the atoms they hold (:func:`cvflow.sampler.saved_atoms_of`: None for all)."""
    from .sampler import load_frames, saved_atoms_of
    from .workflow import production_md_dir
    for d in [production_md_dir(run.dir)] + [r.dir / "md" for r in reversed(run.iterations)]:
        if (d / "segment.json").exists():
            frames = load_frames(d, bundle)
            return (frames, saved_atoms_of(d)) if with_atoms else frames
    return (None, None) if with_atoms else None


def _plot_ramachandran(run: RunRecord, out: Path) -> Path | None:
    """The reweighted free energy of production on (φ, ψ), for a peptide."""
    from .workflow import production_md_dir
    prod, md_dir = run.dir / "production", production_md_dir(run.dir)
    if not ((prod / "weights.npy").exists() and (md_dir / "traj.dcd").exists()):
        return None
    from .sampler import read_dcd
    angles = phi_psi_degrees(read_dcd(md_dir / "traj.dcd", md_dir / "topology.pdb"))
    if angles is None:
        return None
    edges = np.linspace(-180, 180, 61)
    h, _, _ = np.histogram2d(*angles, [edges, edges], weights=np.load(prod / "weights.npy"))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    frozen = production_weights(run) == "frozen"
    ramachandran_panel(fig, ax, h, run.kT, "production, frozen bias" if frozen else "production, reweighted")
    return save_figure(fig, out)


def _plot_cv_map(run: RunRecord, out: Path) -> Path | None:
    """Molecules: the Ramachandran plane coloured by each CV component. Toys: the CV's
    contours over the potential."""
    from .system import build_system, toy_positions
    from .workflow import cv_values
    final_cv = run.dir / run.summary["final_cv"] if run.summary else next(
        (r.cv for r in reversed(run.iterations) if r.cv is not None and r.cv.exists()), None)
    if final_cv is None or not run.config:
        return None
    cfg = run_config(run)
    bundle = build_system(cfg.system, cfg.features.atoms)
    plt = _plt()
    if bundle.is_toy:
        frames = _final_frames(run, bundle)
        lo = np.array([-2.0, -1.5]) if frames is None else frames[:, 0, :2].min(0) - 0.3
        hi = np.array([2.0, 2.5]) if frames is None else frames[:, 0, :2].max(0) + 0.3
        xs, ys = np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120)
        X, Y = np.meshgrid(xs, ys)
        pts = toy_positions(np.column_stack([X.ravel(), Y.ravel()]))
        v = _toy_energies(bundle, pts[:, 0])
        z = cv_values(final_cv, pts)
        fig, axes = plt.subplots(1, z.shape[1], figsize=(5.2 * z.shape[1], 4.2), squeeze=False)
        for k, ax in enumerate(axes[0]):
            vv = v.reshape(X.shape)
            cs = ax.contourf(X, Y, np.minimum(vv - vv.min(), 20 * run.kT), levels=20, cmap="Greys_r")
            fig.colorbar(cs, ax=ax, label="V (kJ/mol)")
            cl = ax.contour(X, Y, z[:, k].reshape(X.shape), levels=12, cmap="coolwarm")
            ax.clabel(cl, fontsize=6)
            ax.set_title(f"CV {k + 1} over the potential")
            ax.set_xlabel("x (nm)")
            ax.set_ylabel("y (nm)")
    else:
        import mdtraj as md
        frames, saved = _final_frames(run, bundle, with_atoms=True)
        if frames is None or not len(frames):
            return None
        from .cvs import ramachandran_angles
        top = md.Topology.from_openmm(bundle.topology)
        try:
            ang = ramachandran_angles(md.Trajectory(frames, top if saved is None else top.subset(saved)))
        except ValueError:  # no φ/ψ: no Ramachandran map
            return None
        phi, psi = ang[:, :1], ang[:, 1:]
        z = cv_values(final_cv, frames, saved, bundle.n_atoms)
        fig, axes = plt.subplots(1, z.shape[1], figsize=(5.2 * z.shape[1], 4.4), squeeze=False)
        for k, ax in enumerate(axes[0]):
            sc = ax.scatter(np.degrees(phi[:, 0]), np.degrees(psi[:, 0]), c=z[:, k], s=6, cmap="coolwarm")
            fig.colorbar(sc, ax=ax, label=f"CV {k + 1}")
            ax.set_xlim(-180, 180)
            ax.set_ylim(-180, 180)
            ax.set_xlabel("φ (degrees)")
            ax.set_ylabel("ψ (degrees)")
            ax.set_title(f"CV {k + 1} on the Ramachandran plane")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _final_decoder(run: RunRecord):
    """The final iteration's decoder.pt and the range of its CV (the last training grid)."""
    final_cv = run.summary["final_cv"] if run.summary else next(
        (f"{r.dir.name}/cv.pt" for r in reversed(run.iterations) if r.cv is not None and r.cv.exists()), None)
    if final_cv is None:
        return None, None
    path = run.dir / final_cv.replace("cv.pt", "decoder.pt")
    info = art.Manifest(run.dir).get(final_cv.replace("/cv.pt", "/train")) or {}
    if not path.exists() or not info.get("grid"):
        return None, None
    return path, info["grid"]


def _toy_saddles(bundle, lo, hi, n: int = 80) -> np.ndarray:
    """Saddle points (index 1) of a toy potential inside [lo, hi]: grid minima of |∇V|
    refined by Newton's method on OpenMM's forces, kept where the Hessian has one negative
    eigenvalue."""
    import openmm as mm
    from openmm import unit as u
    from scipy.optimize import root
    ctx = mm.Context(bundle.system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))

    def grad(p):
        ctx.setPositions([mm.Vec3(p[0], p[1], 0.0)])
        f = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        return -np.asarray(f[0, :2], float)
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    g = np.array([[np.linalg.norm(grad((x, y))) for y in ys] for x in xs])
    found = []
    for i in range(1, n - 1):
        for j in range(1, n - 1):
            if g[i, j] > g[i - 1:i + 2, j - 1:j + 2].min():
                continue
            r = root(grad, (xs[i], ys[j]))
            if not r.success or not (lo <= r.x).all() or not (r.x <= hi).all():
                continue
            h = 1e-4
            hess = np.array([(grad(r.x + e) - grad(r.x - e)) / (2 * h) for e in (np.array([h, 0]), np.array([0, h]))])
            if np.sum(np.linalg.eigvalsh((hess + hess.T) / 2) < 0) == 1 and \
                    all(np.linalg.norm(r.x - q) > 1e-3 for q in found):
                found.append(r.x)
    return np.array(found).reshape(-1, 2)


def _decoders(run: RunRecord, out_dir: Path) -> Path | None:
    """Toys: every decoder's curve over the potential, with its saddle points
    (``decoders.png``). Molecules: the decoded structures along each CV component (the
    others at the grid's centre), one model per value and decoder, as a multi-model PDB of
    the feature atoms that a viewer opens (``decoded.pdb``). None without a decoder."""
    import torch
    from .system import build_system
    path, grid = _final_decoder(run)
    if path is None or not run.config:
        return None
    dec = torch.jit.load(str(path))
    cfg = run_config(run)
    bundle = build_system(cfg.system, cfg.features.atoms)
    lo_z, hi_z = np.array([g["min"] for g in grid]), np.array([g["max"] for g in grid])
    if not bundle.is_toy:
        import mdtraj as md
        top = bundle.mdtraj_topology().subset(bundle.feature_atoms)
        models = []
        for a in range(len(grid)):
            z = np.tile((lo_z + hi_z) / 2, (41, 1))
            z[:, a] = np.linspace(lo_z[a], hi_z[a], 41)
            with torch.no_grad():
                rec = dec(torch.as_tensor(z)).numpy()  # (41, K, m)
            models += [rec[:, k].reshape(41, top.n_atoms, 3) for k in range(rec.shape[1])]
        out = out_dir / "decoded.pdb"
        md.Trajectory(np.concatenate(models).astype(np.float32), top).save_pdb(str(out))
        return out
    if len(grid) != 1:
        return None  # toys: curves along a 1-D CV
    z = np.linspace(lo_z[0], hi_z[0], 400)
    with torch.no_grad():
        rec = dec(torch.as_tensor(z[:, None])).numpy()  # (n, K, 2)
    out = out_dir / "decoders.png"
    frames = _final_frames(run, bundle)
    pts_xy = rec.reshape(-1, 2)
    lo = (pts_xy.min(0) if frames is None else np.minimum(frames[:, 0, :2].min(0), pts_xy.min(0))) - 0.3
    hi = (pts_xy.max(0) if frames is None else np.maximum(frames[:, 0, :2].max(0), pts_xy.max(0))) + 0.3
    xs, ys = np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120)
    X, Y = np.meshgrid(xs, ys)
    v = _toy_energies(bundle, np.column_stack([X.ravel(), Y.ravel(), np.zeros(X.size)])).reshape(X.shape)
    saddles = _toy_saddles(bundle, lo, hi)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    cs = ax.contourf(X, Y, np.minimum(v - v.min(), 20 * run.kT), levels=20, cmap="Greys_r")
    fig.colorbar(cs, ax=ax, label="V (kJ/mol)")
    for k in range(rec.shape[1]):
        ax.plot(rec[:, k, 0], rec[:, k, 1], lw=2, label=f"decoder {k + 1}")
        ax.plot(rec[-1, k, 0], rec[-1, k, 1], "o", ms=4, color=ax.lines[-1].get_color())  # the ξ-max end
    if len(saddles):
        ax.plot(saddles[:, 0], saddles[:, 1], "x", color="red", ms=9, mew=2, label="saddle points")
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title(f"decoded curves of {path.parent.name} (dot: largest ξ)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _toy_energies(bundle, xy: np.ndarray) -> np.ndarray:
    """The toy potential at points (n, 3), through OpenMM (the expression's own evaluator)."""
    import openmm as mm
    from openmm import unit as u
    ctx = mm.Context(bundle.system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    out = np.empty(len(xy))
    for n, p in enumerate(xy):
        ctx.setPositions([mm.Vec3(*p)] * bundle.n_atoms)
        out[n] = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    return out


# -- report and export ---------------------------------------------------------------------

def write_report(run_dir, out=None) -> Path:
    """``report.html`` and its PNGs in ``out`` (default ``RUN_DIR/report/``)."""
    run = load_run(run_dir)
    out = run.dir / "report" if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kT = run.kT
    figs = []
    for r in run.iterations:
        if r.fes is not None and r.fes.exists():
            figs.append(("free energy", f"Iteration {r.index} (eABF on ξ_{r.index - 1}, CZAR)",
                         plot_fes(r.fes, kT, out / f"fes_iter_{r.index:03d}.png", f"iteration {r.index}")))
    if run.production_fes is not None:
        figs.append(("free energy", "Production (final CV)",
                     plot_fes(run.production_fes, kT, out / "fes_production.png", "production")))
    for section, caption, fn, name in (
            ("CV map", "The final CV", _plot_cv_map, "cv_map.png"),
            ("convergence", "regscore between successive CVs, the threshold, and the bootstrap R² values",
             _plot_convergence, "convergence.png"),
            ("training", "Training curves (solid: training set; dashed: validation set)", _plot_training,
             "training.png"),
            ("weights", "Reweighting factors of each biased iteration, with the effective sample size",
             _plot_weights, "weights.png"),
            ("Ramachandran map", "Free energy on (φ, ψ) of the production's frames: "
             + WEIGHTS_TEXT.get(production_weights(run), "reweighted"), _plot_ramachandran, "ramachandran.png")):
        p = fn(run, out / name)
        if p is not None:
            figs.append((section, caption, p))
    def passed(r):
        if r.regscore is None:
            return "-"
        floored = " (floored)" if r.quantile_below_floor is not None else ""
        return html.escape(converged_text(r)) + floored
    rows = "".join(
        f"<tr><td>{r.index}</td><td>{frames_text(r)}</td><td>{'-' if r.ess is None else f'{r.ess:.0f}'}</td>"
        f"<td>{'-' if r.regscore is None else f'{r.regscore:.4f}'}</td>"
        f"<td>{'-' if r.threshold is None else f'{r.threshold:.4f}'}</td><td>{passed(r)}</td>"
        f"<td>{r.wall_seconds:.1f}</td></tr>"
        for r in run.iterations)
    for label, frames, wall in production_rows(run):
        rows += (f"<tr><td>{html.escape(label)}</td><td>{'-' if frames is None else frames}</td><td>-</td><td>-</td>"
                 f"<td>-</td><td>-</td><td>{wall:.1f}</td></tr>")
    verdict = ""
    if run.summary is not None:
        verdict = (" Converged: yes." if run.summary.get("converged")
                   else " Converged: no (convergence.max_iterations reached).")
    body = [f"<h1>cvflow report: {html.escape(str(run.dir.name))}</h1>",
            f"<p>Status: {html.escape(run.stage)}. Temperature {html.escape(str(run.config.get('md', {}).get('temperature', '?')))}, "
            f"kT = {kT:.4f} kJ/mol.{verdict}</p>",
            "<table><tr><th>iteration</th><th>frames</th><th>ESS</th><th>regscore</th><th>threshold</th>"
            f"<th>converged</th><th>wall time (s)</th></tr>{rows}</table>"]
    label, states = latest_states(run)
    if states:
        ref = states["reference_state"]
        srows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{population_text(p)}</td><td>"
            + ("0 (reference)" if k == ref else
               html.escape(delta_f_text(states["delta_f"][k]) or "undefined (a state without weight)")) + "</td></tr>"
            for k, p in states["populations"].items())
        body.append(f"<h2>States ({html.escape(label)})</h2><table><tr><th>state</th><th>population</th>"
                    f"<th>ΔF − F({html.escape(ref)})</th></tr>{srows}</table>")
    decoded = _decoders(run, out)
    if decoded is not None and decoded.suffix == ".png":
        figs.append(("decoders", "The final iteration's decoded curve(s) z ↦ d_k(z) over the potential; red "
                                 "crosses: saddle points", decoded))
    elif decoded is not None:
        body.append(f'<h2>decoders</h2><p>The decoded structures along ξ: <a href="{decoded.name}">'
                    f"{decoded.name}</a>, a multi-model PDB of the feature atoms (aligned), 41 values over the "
                    "final grid along each CV component (the others at the grid's centre), for each decoder "
                    "in turn.</p>")
    section = None
    for sec, caption, p in figs:
        if sec != section:
            body.append(f"<h2>{html.escape(sec)}</h2>")
            section = sec
        body.append(f'<figure><img src="{p.name}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cvflow report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            "figure{margin:1em 0}img{width:100%;max-width:1000px}figcaption{font-size:90%}</style>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    art.write_text(out / "report.html", page)
    return out / "report.html"


def export_run(run_dir, to) -> list[Path]:
    """Copy what production elsewhere needs: ``cv.pt``, ``plumed.dat`` + ``cv_plumed.pt``, the
    reference structure and the free energy."""
    run = load_run(run_dir)
    if run.summary is not None:
        cv = run.dir / run.summary["final_cv"]
    else:
        cv = next((r.cv for r in reversed(run.iterations) if r.cv is not None and r.cv.exists()), None)
    if cv is None:
        raise ConfigError(f"{run.dir}: no CV has been trained yet; nothing to export")
    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise ConfigError(f"--to {to}: the directory is not empty; choose a new one")
    to.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copy2(cv, to / "cv.pt"))]
    plumed_dir = cv.parent / "plumed"
    if not (plumed_dir / "plumed.dat").exists():  # a run from before cvflow wrote it: write it now
        from .bias.plumed import export_plumed
        from .fes import Grid
        from .system import build_system
        cfg = run_config(run)
        stage = art.read_json(run.dir / "manifest.json")["stages"][f"{cv.parent.name}/train"]
        grid = Grid.from_dims(cfg.bias.grid) if cfg.bias.grid is not None else Grid.from_list(stage["grid"])
        plumed_dir = to / "_plumed"
        export_plumed(cfg, build_system(cfg.system, cfg.features.atoms), cv, grid, plumed_dir)
    for name in ("plumed.dat", "cv_plumed.pt"):
        if (plumed_dir / name).exists():
            written.append(Path(shutil.copy2(plumed_dir / name, to / name)))
    if plumed_dir == to / "_plumed":
        shutil.rmtree(plumed_dir)
    pdb = run_config(run).system.pdb if run.config else None
    if pdb is not None and Path(pdb).is_file():
        written.append(Path(shutil.copy2(pdb, to / "reference.pdb")))
    try:
        fes, _ = fes_path(run, None)
        written.append(Path(shutil.copy2(fes, to / "fes.csv")))
    except ConfigError:
        pass
    return written
