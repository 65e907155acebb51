"""CZAR free-energy estimator and integration of gradients on a grid.

CZAR (Lesage et al., J. Phys. Chem. B 121, 3676, 2017) estimates the gradient of the
free energy along ξ from an extended-system run:

    ∇F(z) = −kT ∇ ln ρ̃(z) + ⟨κ (λ − ξ)⟩_z

where ρ̃ is the (biased) histogram of ξ and ⟨κ(λ − ξ)⟩_z the mean coupling force over the
samples with ξ in bin z. It is accumulated per sample, as Colvars and PLUMED's DRR do:
forming κ(⟨λ⟩_z − z_centre) instead adds κ(⟨ξ⟩_z − z_centre) ≈ κh²/12 · d ln ρ̃/dz, which
with κ = kT/h² is a twelfth of the histogram term. The statistics are a count and a sum of
κ(λ − ξ) per bin. Those of several runs add exactly (walkers), and because each sample
carries its own κ, so do parts run with different κ (a stage recovered from a blow-up with
a softer coupling): for a mixture, the pooled histogram term and the pooled mean force
combine to the same ∇F.

Separate visited regions. The gradient relates bins only through a chain of usable
neighbours. Bins are grouped into connected regions (through periodic edges too), and the
free energy is integrated on the region that holds the most samples; other regions get no
free energy (NaN), because nothing in the gradient fixes their offset. The same rule holds
in 1-D and 2-D (:func:`connected_regions`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

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

    def bin_indices(self, values: np.ndarray) -> np.ndarray:
        """The bin of each point ``values`` (n, dim), as integers (n, dim): periodic dimensions
        wrapped into the grid, the others as they fall (below 0 or ≥ bins outside)."""
        periods = self.periods
        safe = np.where(periods > 0, periods, 1.0)
        wrapped = np.where(periods > 0, self.mins + np.mod(values - self.mins, safe), values)
        k = np.floor((wrapped - self.mins) / self.widths).astype(np.int64)
        return np.where(periods > 0, np.mod(k, self.bins), k)

    def to_list(self) -> list[dict]:
        return [{"min": float(a), "max": float(b), "bins": int(n), "periodic": bool(p)}
                for a, b, n, p in zip(self.mins, self.maxs, self.bins, self.periodic)]

    def same_as(self, other: "Grid") -> bool:
        return (np.allclose(self.mins, other.mins) and np.allclose(self.maxs, other.maxs)
                and np.array_equal(self.bins, other.bins) and np.array_equal(self.periodic, other.periodic))


@dataclass
class CZARStats:
    """Additive CZAR statistics on a grid: per bin of ξ, the sample count and Σ κ(λ − ξ) in
    kJ/mol per CV unit (λ − ξ as the nearest image on periodic dimensions). ``kappa`` is the
    coupling at the start, for the record; the sums carry each sample's own κ."""
    grid: Grid
    kappa: float
    kT: float
    count: np.ndarray   # (*bins,)
    sum_coupling: np.ndarray  # (*bins, dim): Σ κ (λ − ξ) over the samples in each bin

    def merge(self, other: "CZARStats") -> "CZARStats":
        """Statistics of two runs on the same grid, as if they were one run."""
        if not self.grid.same_as(other.grid):
            raise ValueError("cannot merge CZAR statistics on different grids")
        return CZARStats(self.grid, self.kappa, self.kT, self.count + other.count,
                         self.sum_coupling + other.sum_coupling)

    def gradient(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """CZAR gradient ``(*bins, dim)`` in kJ/mol per CV unit, and the mask of usable bins."""
        g = self.grid
        count = self.count.astype(float)
        ok = count >= min_count
        with np.errstate(divide="ignore", invalid="ignore"):
            logrho = np.where(ok, np.log(np.where(ok, count, 1.0)), np.nan)
            mean_coupling = self.sum_coupling / count[..., None]
        grad = np.full(tuple(g.bins) + (g.dim,), np.nan)
        for i in range(g.dim):
            dlog = _finite_gradient(logrho, g.widths[i], axis=i, periodic=bool(g.periodic[i]))
            grad[..., i] = -self.kT * dlog + mean_coupling[..., i]
        mask = ok & np.all(np.isfinite(grad), axis=-1)
        return grad, mask

    def regions(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Labels of the connected regions of usable bins (0: unusable), and the mask of the
        main region: the one that holds the most samples."""
        _, mask = self.gradient(min_count)
        labels = connected_regions(mask, self.grid.periodic)
        return labels, main_region(labels, self.count)

    def free_energy(self, min_count: int = 1) -> np.ndarray:
        """Free energy on the grid in kJ/mol, minimum 0, on the main connected region of
        usable bins; NaN elsewhere (unsampled, or in a region the gradient cannot relate)."""
        grad, _ = self.gradient(min_count)
        _, main = self.regions(min_count)
        if self.grid.dim == 1:
            f = integrate_1d(grad[:, 0], self.grid.widths[0], main, periodic=bool(self.grid.periodic[0]))
        else:
            f = integrate_2d(grad, self.grid.widths, main, periodic=self.grid.periodic)
        return f - np.nanmin(f) if np.any(np.isfinite(f)) else f

    def region_summary(self, min_count: int = 1) -> dict:
        """How the samples split over the connected regions (for logs and summary.json)."""
        labels, main = self.regions(min_count)
        total = float(self.count.sum())
        n = int(labels.max())
        in_main = float(self.count[main].sum())
        return {"regions": n, "samples": int(total),
                "fraction_in_main_region": in_main / total if total else 0.0,
                "fraction_elsewhere": 1.0 - in_main / total if total else 0.0}

    def save(self, path) -> None:
        np.savez(path, mins=self.grid.mins, maxs=self.grid.maxs, bins=self.grid.bins,
                 periodic=self.grid.periodic, kappa=self.kappa, kT=self.kT, count=self.count, sum_coupling=self.sum_coupling)

    @classmethod
    def load(cls, path) -> "CZARStats":
        d = np.load(path)
        periodic = d["periodic"] if "periodic" in d.files else None
        grid = Grid(d["mins"], d["maxs"], d["bins"], periodic)
        if "sum_coupling" in d.files:
            sums = d["sum_coupling"]
        else:  # written by cvflow 0.1 (Σλ per bin): the bin centre stands in for each sample's ξ
            sums = float(d["kappa"]) * (d["sum_lambda"] - d["count"][..., None] * grid.mesh())
        return cls(grid, float(d["kappa"]), float(d["kT"]), d["count"], sums)


def connected_regions(mask: np.ndarray, periodic) -> np.ndarray:
    """Labels 1..n of the connected regions of ``mask`` (neighbours along each axis, and
    across the edge of a periodic axis), numbered in the order of each region's first bin
    (C order); 0 outside the mask."""
    mask = np.asarray(mask, bool)
    if mask.size == 0:
        return np.zeros(mask.shape, np.int64)
    per = np.asarray(periodic, bool).reshape(mask.ndim)
    return _region_labels(np.ascontiguousarray(mask).ravel(), np.array(mask.shape, np.int64), per).reshape(mask.shape)


@numba.njit(cache=True)
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@numba.njit(cache=True)
def _region_labels(flat, shape, periodic):
    """:func:`connected_regions` on the flattened (C-order) mask: union-find over each bin
    and its next neighbour along every axis. Compiled: the native engine's projected ABF
    relabels the visited bins inside the MD loop whenever a new one is visited."""
    size = flat.size
    parent = np.arange(size)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        m = shape[axis]
        for p in range(size):
            if not flat[p]:
                continue
            c = (p // stride) % m
            if c + 1 < m:
                q = p + stride
            elif periodic[axis] and m > 1:
                q = p - c * stride
            else:
                continue
            if flat[q]:
                a, b = _find(parent, p), _find(parent, q)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
        stride *= m
    labels = np.zeros(size, np.int64)
    n = 0
    for p in range(size):  # each root is its region's first bin, reached first here
        if flat[p]:
            r = _find(parent, p)
            if r == p:
                n += 1
                labels[p] = n
            else:
                labels[p] = labels[r]
    return labels


def joining_level(a: np.ndarray, periodic, kT: float, weight: float = 0.999) -> tuple[float, float]:
    """Where the basins of a free energy ``a`` on a grid join. The basins are the bins
    under the level ``cut`` below which the grid holds ``weight`` of e^{−a/kT}; the
    joining level is the lowest L at which the bins with a ≤ L connect all of them in one
    region (neighbours along each axis, across a periodic edge too): the highest saddle on
    the lowest paths between the basins. Returns (cut, L), in a's units above its minimum.
    Used to keep a frozen bias's ceiling from cutting a barrier between basins that carry
    the weight (:meth:`cvflow.bias.native.NativeEABF.freeze`)."""
    a = np.asarray(a, np.float64)
    a = a - a.min()
    flat = np.sort(a.ravel())
    w = np.cumsum(np.exp(-flat / kT))
    cut = float(flat[min(int(np.searchsorted(w, weight * w[-1])), flat.size - 1)])
    basins = a <= cut

    def joined(level: float) -> bool:
        return np.unique(connected_regions(a <= level, periodic)[basins]).size == 1

    levels = flat[flat >= cut]
    lo, hi = 0, levels.size - 1  # the whole grid is one region: levels[-1] joins them
    while lo < hi:
        mid = (lo + hi) // 2
        if joined(levels[mid]):
            hi = mid
        else:
            lo = mid + 1
    return cut, float(levels[lo])


def main_region(labels: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mask of the labelled region that holds the most samples (ties: the lowest label)."""
    n = int(labels.max())
    if n == 0:
        return np.zeros(labels.shape, bool)
    per = np.bincount(labels.ravel(), weights=np.asarray(count, float).ravel(), minlength=n + 1)
    per[0] = -1.0
    return labels == int(np.argmax(per))


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


@numba.njit(cache=True)
def _normal_equations_2d(mask, h0, h1, per0, per1):
    """The least-squares system of :class:`Poisson2D` for one mask, built in one pass.

    Unknowns are the usable bins in raster order. Each pair of neighbouring usable bins (along
    an axis; on a periodic axis the last and first bins too) is one equation (F_q − F_p)/h =
    the pair's mean gradient. Returns the unknowns' count; each one's connected region
    (numbered by first bin); the free unknowns (all but each region's first bin, where F = 0);
    the normal equations AᵀA restricted to the free unknowns, as CSC arrays (indptr,
    indices, data; rows sorted, duplicates summed); and per equation the two bins' entries of
    the flattened (nx, ny, 2) gradient, their unknowns and 1/h."""
    nx, ny = mask.shape
    flat = mask.ravel()
    size = nx * ny
    idx = np.full(size, -1, np.int64)
    cells = np.empty(size, np.int64)
    n = 0
    for p in range(size):
        if flat[p]:
            idx[p] = n
            cells[n] = p
            n += 1
    # each unknown's four neighbours (+x, −x, +y, −y), −1 where there is none or it is the
    # bin itself (a periodic axis of one bin: its equation is 0 = 0)
    nbr = np.full((n, 4), -1, np.int64)
    coef = np.zeros(4)
    coef[0] = coef[1] = 1.0 / (h0 * h0)
    coef[2] = coef[3] = 1.0 / (h1 * h1)
    n_eq = 0
    for k in range(n):
        i, j = cells[k] // ny, cells[k] % ny
        for d in range(4):
            i2, j2 = i, j
            if d == 0:
                i2 = i + 1
            elif d == 1:
                i2 = i - 1
            elif d == 2:
                j2 = j + 1
            else:
                j2 = j - 1
            if i2 < 0 or i2 >= nx:
                if not per0:
                    continue
                i2 %= nx
            if j2 < 0 or j2 >= ny:
                if not per1:
                    continue
                j2 %= ny
            l_ = idx[i2 * ny + j2]
            if l_ < 0 or l_ == k:
                continue
            nbr[k, d] = l_
            if d == 0 or d == 2:  # each equation once, from its first bin
                n_eq += 1
    # regions numbered from 0 in the order of their first bin, which is pinned
    per = np.empty(2, np.bool_)
    per[0], per[1] = per0, per1
    labels = _region_labels(flat, np.array([nx, ny], np.int64), per)
    region = np.empty(n, np.int64)
    reduced = np.full(n, -1, np.int64)
    n_regions = 0
    n_free = 0
    for k in range(n):
        region[k] = labels[cells[k]] - 1
        if region[k] == n_regions:
            n_regions += 1
        else:
            reduced[k] = n_free
            n_free += 1
    free = np.empty(n_free, np.int64)
    for k in range(n):
        if reduced[k] >= 0:
            free[reduced[k]] = k
    # AᵀA on the free unknowns, column by column: the diagonal sums every equation of the
    # bin, each equation with a free neighbour adds −1/h² (twice for a periodic axis of two bins)
    indptr = np.zeros(n_free + 1, np.int64)
    indices = np.empty(5 * n_free, np.int64)
    data = np.empty(5 * n_free)
    rows = np.empty(5, np.int64)
    vals = np.empty(5)
    nnz = 0
    for c in range(n_free):
        k = free[c]
        m = 1
        rows[0] = c
        vals[0] = 0.0
        for d in range(4):
            l_ = nbr[k, d]
            if l_ < 0:
                continue
            vals[0] += coef[d]
            if reduced[l_] < 0:
                continue
            hit = -1
            for e in range(1, m):
                if rows[e] == reduced[l_]:
                    hit = e
            if hit >= 0:
                vals[hit] -= coef[d]
            else:
                rows[m] = reduced[l_]
                vals[m] = -coef[d]
                m += 1
        for a in range(1, m):  # rows in order
            e = a
            while e > 0 and rows[e - 1] > rows[e]:
                rows[e - 1], rows[e] = rows[e], rows[e - 1]
                vals[e - 1], vals[e] = vals[e], vals[e - 1]
                e -= 1
        for e in range(m):
            indices[nnz] = rows[e]
            data[nnz] = vals[e]
            nnz += 1
        indptr[c + 1] = nnz
    gp = np.empty(n_eq, np.int64)
    gq = np.empty(n_eq, np.int64)
    ip = np.empty(n_eq, np.int64)
    iq = np.empty(n_eq, np.int64)
    inv_h = np.empty(n_eq)
    e = 0
    for k in range(n):
        for d in (0, 2):
            l_ = nbr[k, d]
            if l_ < 0:
                continue
            axis = d // 2
            gp[e], gq[e] = cells[k] * 2 + axis, cells[l_] * 2 + axis
            ip[e], iq[e] = k, l_
            inv_h[e] = 1.0 / (h0 if axis == 0 else h1)
            e += 1
    return (n, region, free, indptr, indices[:nnz].copy(), data[:nnz].copy(), gp, gq, ip, iq, inv_h)


class Poisson2D:
    """Least-squares (Poisson) integration of 2-D gradient fields on a fixed grid shape.

    Each pair of neighbouring usable bins gives one equation F_q − F_p = h ḡ (ḡ the mean of
    the two bins' gradients along that axis; on a periodic axis the last and first bins are
    neighbours). The normal equations, with one bin of each connected region pinned, are
    factorised once per mask and reused: the native engine's projected ABF integrates the
    same grid every few thousand steps. F has mean zero over each region (nothing in the
    gradient relates separate regions).
    """

    def __init__(self, widths, periodic=(False, False)):
        self.widths = np.asarray(widths, float)
        self.periodic = tuple(bool(p) for p in np.asarray(periodic, bool).reshape(2))
        self._key = None

    def _factorise(self, mask: np.ndarray):
        """The normal equations AᵀA of the mask's pairs, without the pinned bins
        (:func:`_normal_equations_2d`, compiled), LU-factorised without pivoting (AᵀA is
        symmetric positive definite there) in a symmetric fill-reducing order: the MD loop's
        projected ABF calls this whenever a new bin is visited, inside the MD loop, where
        per-call overhead costs more than the arithmetic."""
        from scipy.sparse.linalg import splu
        key = (mask.shape, mask.tobytes())
        if key == self._key:
            return
        (self._n, self._region, self._free, indptr, indices, data,
         *eqs) = _normal_equations_2d(np.ascontiguousarray(mask), self.widths[0], self.widths[1], *self.periodic)
        self._eqs = tuple(eqs)  # for integrate: the gradient entries, unknowns and 1/h of each equation
        nf = len(self._free)
        self._lu = None
        if nf:
            ata = sp.csc_matrix((data, indices, indptr), shape=(nf, nf))
            self._lu = splu(ata, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                            options={"SymmetricMode": True})
        self._key = key

    def integrate(self, grad: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """F on ``mask`` (NaN elsewhere), mean zero over each connected region of it."""
        mask = np.asarray(mask, bool)
        f = np.full(mask.shape, np.nan)
        if mask.sum() == 0:
            return f
        self._factorise(mask)
        flat = np.ascontiguousarray(grad, float).reshape(-1)
        gp, gq, ip, iq, inv_h = self._eqs
        g = (0.5 * (flat[gp] + flat[gq])) * inv_h
        # Aᵀ b for the equations (F_q − F_p) / h = the pair's mean gradient
        rhs = np.bincount(iq, g, self._n) - np.bincount(ip, g, self._n)
        sol = np.zeros(self._n)
        if self._lu is not None:
            sol[self._free] = self._lu.solve(rhs[self._free])
        means = np.bincount(self._region, sol) / np.bincount(self._region)
        f[mask] = sol - means[self._region]
        return f

    def project(self, grad: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The curl-free part of ``grad`` on ``mask``: the gradient of :meth:`integrate`
        (central differences, one-sided at the mask's edge), ``grad`` itself elsewhere."""
        f = self.integrate(grad, mask)
        out = np.array(grad, float, copy=True)
        for axis in range(2):
            g = _finite_gradient(f, self.widths[axis], axis=axis, periodic=self.periodic[axis])
            out[..., axis] = np.where(mask & np.isfinite(g), g, out[..., axis])
        return out


def integrate_2d(grad: np.ndarray, widths: np.ndarray, mask: np.ndarray, periodic=(False, False)) -> np.ndarray:
    """Least-squares (Poisson) integration of a 2-D gradient field on the usable bins
    (:class:`Poisson2D`), mean zero over each connected region of ``mask``."""
    return Poisson2D(widths, periodic).integrate(np.asarray(grad, float), np.asarray(mask, bool))


def write_fes(path, stats: CZARStats, engine: str = "native") -> dict:
    """``fes.csv``: bin centres, free energy (kJ/mol, minimum 0) and sample count.

    Returns :meth:`CZARStats.region_summary`; bins outside the main connected region of
    sampled bins have no free energy (NaN), and a comment line says how many samples they hold.
    """
    f = stats.free_energy()
    regions = stats.region_summary()
    mesh = stats.grid.mesh().reshape(-1, stats.grid.dim)
    header = [f"cv{i + 1}" for i in range(stats.grid.dim)] + ["free_energy", "count"]
    rows = np.column_stack([mesh, f.reshape(-1), stats.count.reshape(-1)])
    write_csv(path, header, rows, comments=[
        f"CZAR free energy from cvflow ({engine} engine)",
        "cv columns: bin centres in CV units; free_energy: kJ/mol, minimum 0, NaN where unsampled",
        f"kT = {stats.kT:.6g} kJ/mol; kappa = {stats.kappa:.6g} kJ/mol/cv^2",
        _PERIODS + " ".join(f"{p:.17g}" for p in stats.grid.periods) + "  (0: not periodic)",
        f"regions: {regions['regions']} connected region(s) of sampled bins; free energy on the main one, "
        f"which holds {100 * regions['fraction_in_main_region']:.2f}% of the samples (other regions: NaN)",
    ])
    return regions


_PERIODS = "periods: "


def histogram_free_energy(grid: Grid, xi: np.ndarray, w: np.ndarray, kT: float) -> tuple[np.ndarray, np.ndarray]:
    """F on ``grid`` from frames' CV values ``xi`` (n, d) and weights ``w`` (their unbiased
    reweighting factors): −kT ln of the weighted share of each bin per unit CV volume,
    minimum 0, NaN where no frame falls (kJ/mol); and the frames per bin.

    The probability of a bin, as a quadrature of the exact density gives it. Where the CV
    folds (its range ends inside a basin, as a learned CV's does at a well whose two sides it
    maps alike) the density has an integrable singularity, and a gradient integral (CZAR,
    :meth:`CZARStats.free_energy`) is off in the end bins; a histogram is not (README,
    "Several pathways"). Frames outside the grid are not counted; periodic dimensions wrap."""
    xi = np.asarray(xi, float).reshape(len(xi), grid.dim)
    w = np.asarray(w, float).reshape(len(xi))
    k = grid.bin_indices(xi)
    inside = np.all((k >= 0) & (k < grid.bins), axis=1) & np.isfinite(w)
    mass = np.zeros(tuple(grid.bins))
    count = np.zeros(tuple(grid.bins))
    np.add.at(mass, tuple(k[inside].T), w[inside])
    np.add.at(count, tuple(k[inside].T), 1.0)
    total = mass.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(mass > 0, -kT * np.log(mass / (total * np.prod(grid.widths))), np.nan)
    if np.any(np.isfinite(f)):
        f = f - np.nanmin(f)
    return f, count


def write_histogram_fes(path, grid: Grid, xi: np.ndarray, w: np.ndarray, kT: float, weights: str) -> None:
    """``fes_reweighted.csv``, laid out as ``fes.csv`` (:func:`read_fes` reads both): the
    :func:`histogram_free_energy` of reweighted frames; ``weights`` names their estimator."""
    f, count = histogram_free_energy(grid, xi, w, kT)
    mesh = grid.mesh().reshape(-1, grid.dim)
    header = [f"cv{i + 1}" for i in range(grid.dim)] + ["free_energy", "count"]
    write_csv(path, header, np.column_stack([mesh, f.reshape(-1), count.reshape(-1)]), comments=[
        f"free energy from the reweighted histogram of the frames' CV values (weights: {weights})",
        "cv columns: bin centres in CV units; free_energy: kJ/mol, minimum 0, NaN where no frame falls; "
        "count: frames per bin",
        f"kT = {kT:.6g} kJ/mol",
        _PERIODS + " ".join(f"{p:.17g}" for p in grid.periods) + "  (0: not periodic)",
    ])


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


def fes_on_frames(centres: np.ndarray, f: np.ndarray, xi: np.ndarray, periods=None) -> np.ndarray:
    """F at each frame's ξ, by multilinear interpolation between bin centres, using only
    centres where F is known (weights renormalised over those).

    A frame outside the grid, or in a bin with no F (unsampled, or outside the main
    connected region), gets NaN: nothing relates its free energy to the others, so it must
    not be given an arbitrary one. Periodic dimensions (``periods[i] > 0``) wrap.
    """
    centres = np.asarray(centres, float)
    d = centres.shape[1]
    periods = np.zeros(d) if periods is None else np.asarray(periods, float)
    axes = [np.unique(centres[:, i]) for i in range(d)]
    shape = tuple(len(a) for a in axes)
    grid_f = np.asarray(f, float).reshape(shape)
    xi = np.asarray(xi, float).reshape(-1, d)
    n = len(xi)
    widths = np.array([a[1] - a[0] if len(a) > 1 else 1.0 for a in axes])
    lows = np.array([a[0] - 0.5 * w for a, w in zip(axes, widths)])
    u = np.empty((n, d))
    own = np.empty((n, d), np.int64)
    inside = np.ones(n, bool)
    for i in range(d):
        v = xi[:, i]
        if periods[i] > 0:
            v = lows[i] + np.mod(v - lows[i], periods[i])
        k = np.floor((v - lows[i]) / widths[i]).astype(np.int64)
        if periods[i] > 0:
            k = np.mod(k, shape[i])
        inside &= (k >= 0) & (k < shape[i])
        own[:, i] = np.clip(k, 0, shape[i] - 1)
        u[:, i] = (v - lows[i]) / widths[i] - 0.5  # position in units of bins from the first centre
    out = np.full(n, np.nan)
    own_f = grid_f[tuple(own.T)]
    ok = inside & np.isfinite(own_f)
    if not ok.any():
        return out
    base = np.floor(u[ok]).astype(np.int64)
    frac = u[ok] - base
    num = np.zeros(ok.sum())
    den = np.zeros(ok.sum())
    for corner in range(2 ** d):
        idx = np.empty_like(base)
        wgt = np.ones(ok.sum())
        valid = np.ones(ok.sum(), bool)
        for i in range(d):
            bit = (corner >> i) & 1
            j = base[:, i] + bit
            if periods[i] > 0:
                j = np.mod(j, shape[i])
            valid &= (j >= 0) & (j < shape[i])
            idx[:, i] = np.clip(j, 0, shape[i] - 1)
            wgt *= frac[:, i] if bit else 1.0 - frac[:, i]
        fc = grid_f[tuple(idx.T)]
        use = valid & np.isfinite(fc) & (wgt > 0)
        num[use] += wgt[use] * fc[use]
        den[use] += wgt[use]
    # den > 0 always: the frame's own bin is a finite corner with weight ≥ 1/2^d
    out[ok] = num / den
    return out
