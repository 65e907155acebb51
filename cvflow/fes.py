"""CZAR free-energy estimator and integration of gradients on a grid.

CZAR (Lesage et al., J. Phys. Chem. B 121, 3676, 2017) estimates the gradient of the
free energy along ξ from an extended-system run:

    ∇F(z) = −kT ∇ ln ρ̄(z) + κ (⟨λ⟩_z − z)

where ρ̄ is the (biased) histogram of ξ and ⟨λ⟩_z the mean of λ among samples with ξ
in bin z. The statistics are a count and a sum of λ per bin, so those of several runs
(walkers) add exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from .artifacts import read_csv, write_csv


@dataclass
class Grid:
    """A regular grid in CV space: one ``(min, max, bins)`` per dimension.

    ``periodic[i]`` makes dimension i wrap around: its period is ``max − min``.
    """
    mins: np.ndarray
    maxs: np.ndarray
    bins: np.ndarray
    periodic: np.ndarray = field(default=None)

    def __post_init__(self):
        self.mins = np.asarray(self.mins, float)
        self.maxs = np.asarray(self.maxs, float)
        self.bins = np.asarray(self.bins, np.int64)
        if self.periodic is None:
            self.periodic = np.zeros(len(self.bins), bool)
        self.periodic = np.asarray(self.periodic, bool).reshape(len(self.bins))

    @classmethod
    def from_dims(cls, dims) -> "Grid":
        return cls(np.array([d.min for d in dims], float), np.array([d.max for d in dims], float),
                   np.array([d.bins for d in dims], np.int64),
                   np.array([getattr(d, "periodic", False) for d in dims], bool))

    @classmethod
    def from_list(cls, dims: list[dict]) -> "Grid":
        return cls(np.array([d["min"] for d in dims], float), np.array([d["max"] for d in dims], float),
                   np.array([d["bins"] for d in dims], np.int64),
                   np.array([d.get("periodic", False) for d in dims], bool))

    @property
    def periods(self) -> np.ndarray:
        """Period per dimension, 0 where the dimension is not periodic."""
        return np.where(self.periodic, self.maxs - self.mins, 0.0)

    @property
    def dim(self) -> int:
        return len(self.bins)

    @property
    def widths(self) -> np.ndarray:
        return (self.maxs - self.mins) / self.bins

    def centers(self) -> list[np.ndarray]:
        return [self.mins[i] + (np.arange(self.bins[i]) + 0.5) * self.widths[i] for i in range(self.dim)]

    def mesh(self) -> np.ndarray:
        """Bin centres, shape ``(*bins, dim)``."""
        return np.stack(np.meshgrid(*self.centers(), indexing="ij"), axis=-1)

    def to_list(self) -> list[dict]:
        return [{"min": float(a), "max": float(b), "bins": int(n), "periodic": bool(p)}
                for a, b, n, p in zip(self.mins, self.maxs, self.bins, self.periodic)]

    def same_as(self, other: "Grid") -> bool:
        return (np.allclose(self.mins, other.mins) and np.allclose(self.maxs, other.maxs)
                and np.array_equal(self.bins, other.bins) and np.array_equal(self.periodic, other.periodic))


@dataclass
class CZARStats:
    """Additive CZAR statistics on a grid: sample count and Σλ per bin of ξ."""
    grid: Grid
    kappa: float
    kT: float
    count: np.ndarray   # (*bins,)
    sum_lambda: np.ndarray  # (*bins, dim)

    def merge(self, other: "CZARStats") -> "CZARStats":
        """Statistics of two runs on the same grid, as if they were one run."""
        if not self.grid.same_as(other.grid):
            raise ValueError("cannot merge CZAR statistics on different grids")
        return CZARStats(self.grid, self.kappa, self.kT, self.count + other.count,
                         self.sum_lambda + other.sum_lambda)

    def gradient(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """CZAR gradient ``(*bins, dim)`` in kJ/mol per CV unit, and the mask of usable bins."""
        g = self.grid
        count = self.count.astype(float)
        ok = count >= min_count
        with np.errstate(divide="ignore", invalid="ignore"):
            logrho = np.where(ok, np.log(np.where(ok, count, 1.0)), np.nan)
            mean_lam = self.sum_lambda / count[..., None]
        z = g.mesh()
        grad = np.full(tuple(g.bins) + (g.dim,), np.nan)
        for i in range(g.dim):
            dlog = _finite_gradient(logrho, g.widths[i], axis=i, periodic=bool(g.periodic[i]))
            grad[..., i] = -self.kT * dlog + self.kappa * (mean_lam[..., i] - z[..., i])
        mask = ok & np.all(np.isfinite(grad), axis=-1)
        return grad, mask

    def free_energy(self, min_count: int = 1) -> np.ndarray:
        """Free energy on the grid in kJ/mol, minimum 0, NaN where unsampled."""
        grad, mask = self.gradient(min_count)
        if self.grid.dim == 1:
            f = integrate_1d(grad[:, 0], self.grid.widths[0], mask, periodic=bool(self.grid.periodic[0]))
        else:
            f = integrate_2d(grad, self.grid.widths, mask, periodic=self.grid.periodic)
        return f - np.nanmin(f) if np.any(np.isfinite(f)) else f

    def save(self, path) -> None:
        np.savez(path, mins=self.grid.mins, maxs=self.grid.maxs, bins=self.grid.bins,
                 periodic=self.grid.periodic, kappa=self.kappa, kT=self.kT, count=self.count, sum_lambda=self.sum_lambda)

    @classmethod
    def load(cls, path) -> "CZARStats":
        d = np.load(path)
        periodic = d["periodic"] if "periodic" in d.files else None
        return cls(Grid(d["mins"], d["maxs"], d["bins"], periodic), float(d["kappa"]), float(d["kT"]),
                   d["count"], d["sum_lambda"])


def _finite_gradient(a: np.ndarray, h: float, axis: int, periodic: bool = False) -> np.ndarray:
    """Central differences where both neighbours are finite, one-sided otherwise.

    On a periodic axis the first and last bins are neighbours.
    """
    a = np.moveaxis(a, axis, 0)
    out = np.full_like(a, np.nan)
    if a.shape[0] >= 2:
        if periodic:
            fwd = (np.roll(a, -1, axis=0) - a) / h  # between j and j+1 (mod n)
            right = fwd
            left = np.roll(fwd, 1, axis=0)
        else:
            d = (a[1:] - a[:-1]) / h
            right = np.full_like(a, np.nan)
            right[:-1] = d
            left = np.full_like(a, np.nan)
            left[1:] = d
        central = 0.5 * (left + right)
        out = np.where(np.isfinite(central), central, np.where(np.isfinite(right), right, left))
    return np.moveaxis(out, 0, axis)


def integrate_1d(grad: np.ndarray, width: float, mask: np.ndarray, periodic: bool = False) -> np.ndarray:
    """Cumulative trapezoid integration over the longest run of usable bins.

    On a periodic axis a run may wrap around; when every bin is usable, the mean of the
    gradient (which must vanish around a circle) is removed first, so that F is periodic.
    """
    mask = np.asarray(mask, bool)
    if periodic and mask.all():
        g = grad - grad.mean()
        f = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * width)])
        return f
    if periodic and mask.any():
        shift = int(np.argmin(mask))  # an unusable bin goes first, so no run wraps
        f = integrate_1d(np.roll(grad, -shift), width, np.roll(mask, -shift))
        return np.roll(f, shift)
    f = np.full(grad.shape, np.nan)
    runs, start = [], None
    for j, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            runs.append((start, j))
            start = None
    if not runs:
        return f
    a, b = max(runs, key=lambda r: r[1] - r[0])
    f[a] = 0.0
    for j in range(a + 1, b):
        f[j] = f[j - 1] + 0.5 * (grad[j] + grad[j - 1]) * width
    return f


def integrate_2d(grad: np.ndarray, widths: np.ndarray, mask: np.ndarray, periodic=(False, False)) -> np.ndarray:
    """Least-squares (Poisson) integration of a 2-D gradient field on the usable bins.

    Each pair of neighbouring usable bins gives one equation F_q − F_p = h ḡ; on a
    periodic axis the last and first bins are neighbours too.
    """
    nx, ny = mask.shape
    index = -np.ones(mask.shape, dtype=np.int64)
    index[mask] = np.arange(mask.sum())
    rows, cols, vals, rhs = [], [], [], []
    r = 0
    for axis in range(2):
        n_axis = mask.shape[axis]
        ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
        ii, jj = ii.ravel(), jj.ravel()
        i2, j2 = (ii + 1, jj) if axis == 0 else (ii, jj + 1)
        nxt = i2 if axis == 0 else j2
        keep = nxt < n_axis
        if periodic[axis]:
            keep = np.ones_like(keep)
            i2, j2 = i2 % nx, j2 % ny
        ii, jj, i2, j2 = ii[keep], jj[keep], i2[keep], j2[keep]
        ok = mask[ii, jj] & mask[i2, j2]
        for i, j, k, m in zip(ii[ok], jj[ok], i2[ok], j2[ok]):
            rows += [r, r]
            cols += [index[k, m], index[i, j]]
            vals += [1.0 / widths[axis], -1.0 / widths[axis]]
            rhs.append(0.5 * (grad[i, j, axis] + grad[k, m, axis]))
            r += 1
    f = np.full(mask.shape, np.nan)
    if r == 0:
        return f
    n = int(mask.sum())
    # gauge: the mean of F is zero
    rows += [r] * n
    cols += list(range(n))
    vals += [1.0 / n] * n
    rhs.append(0.0)
    a = sp.csr_matrix((vals, (rows, cols)), shape=(r + 1, n))
    sol = lsqr(a, np.asarray(rhs), atol=1e-12, btol=1e-12, iter_lim=20000)[0]
    f[mask] = sol
    return f


def write_fes(path, stats: CZARStats, engine: str = "native") -> None:
    """``fes.csv``: bin centres, free energy (kJ/mol, minimum 0) and sample count."""
    f = stats.free_energy()
    mesh = stats.grid.mesh().reshape(-1, stats.grid.dim)
    header = [f"cv{i + 1}" for i in range(stats.grid.dim)] + ["free_energy", "count"]
    rows = np.column_stack([mesh, f.reshape(-1), stats.count.reshape(-1)])
    write_csv(path, header, rows, comments=[
        f"CZAR free energy from cvflow ({engine} engine)",
        "cv columns: bin centres in CV units; free_energy: kJ/mol, minimum 0, NaN where unsampled",
        f"kT = {stats.kT:.6g} kJ/mol; kappa = {stats.kappa:.6g} kJ/mol/cv^2",
        _PERIODS + " ".join(f"{p:.17g}" for p in stats.grid.periods) + "  (0: not periodic)",
    ])


_PERIODS = "periods: "


def read_fes(path, with_periods: bool = False):
    """Return ``(centres (n, d), free_energy (n,), count (n,))`` from ``fes.csv``.

    With ``with_periods``, also the period of each CV column (0 where not periodic).
    """
    header, data = read_csv(path)
    d = sum(h.startswith("cv") for h in header)
    out = data[:, :d], data[:, d], data[:, d + 1]
    if not with_periods:
        return out
    periods = np.zeros(d)
    for line in Path(path).read_text().splitlines():
        if line.startswith("# " + _PERIODS):
            periods = np.array([float(v) for v in line[len("# " + _PERIODS):].split("(")[0].split()])
    return out + (periods,)


def fes_interpolator(centres: np.ndarray, f: np.ndarray, periods=None):
    """A function ξ (n, d) → F (n,) by linear interpolation on the grid (nearest outside).

    Periodic dimensions (``periods[i] > 0``) wrap: ξ is mapped into the grid's period and
    the first and last bins are interpolated across the boundary.
    """
    from scipy.interpolate import RegularGridInterpolator
    d = centres.shape[1]
    periods = np.zeros(d) if periods is None else np.asarray(periods, float)
    axes = [np.unique(centres[:, i]) for i in range(d)]
    grid_f = f.reshape([len(a) for a in axes])
    finite = np.isfinite(grid_f)
    if not finite.all():
        # fill unsampled bins with the highest sampled free energy (they get tiny weight)
        grid_f = np.where(finite, grid_f, np.nanmax(grid_f) if finite.any() else 0.0)
    lows = [a[0] - 0.5 * (a[1] - a[0]) if len(a) > 1 else a[0] for a in axes]
    for i in range(d):
        if periods[i] > 0:
            grid_f = np.concatenate([np.take(grid_f, [-1], axis=i), grid_f, np.take(grid_f, [0], axis=i)], axis=i)
            axes[i] = np.concatenate([[axes[i][-1] - periods[i]], axes[i], [axes[i][0] + periods[i]]])
    interp = RegularGridInterpolator(axes, grid_f, bounds_error=False, fill_value=None, method="linear")

    def evaluate(xi):
        xi = np.asarray(xi, float).reshape(-1, d).copy()
        for i in range(d):
            if periods[i] > 0:
                xi[:, i] = lows[i] + np.mod(xi[:, i] - lows[i], periods[i])
        clipped = np.column_stack([np.clip(xi[:, i], axes[i][0], axes[i][-1]) for i in range(d)])
        return interp(clipped)
    return evaluate
