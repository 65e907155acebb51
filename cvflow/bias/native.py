"""The built-in engine: extended-system ABF in an OpenMM ``PythonForce``.

The extended variable λ (one per CV dimension) is coupled to ξ(x) by κ/2 (ξ − λ)². It is
integrated by cvflow with its own Langevin thermostat, in step with OpenMM's
LangevinMiddle integrator: each force evaluation at step n uses (x_n, λ_n), then λ moves
to λ_{n+1} by the same kick–drift–thermostat–drift scheme. With a stride k > 1 (multiple
time stepping) all of that happens at every k-th step only, with k times the force on the
atoms and a λ step of k Δt. The ABF force on λ is minus
the running mean of κ(ξ − λ) in λ's bin, ramped in linearly over ``fullsamples``, with
harmonic walls at the grid edges. CZAR statistics (count and Σ κ(λ − ξ) per bin of ξ, one
term per sample) are taken at every step. The per-step work is one numba kernel.

After :meth:`NativeEABF.freeze` the bias on λ is static: a potential B(λ), interpolated
between the bin centres, whose force is its exact gradient. Under a static bias the
stationary distribution of (x, λ) is known, e^{−β[U(x) + κ/2 |ξ(x) − λ|² + B(λ) + W(λ)]}
(W: the walls), so e^{β[B(λ) + W(λ)]} are the exact weights of the frames
(:func:`cvflow.dataset.log_weights_frozen`), whatever the CV resolves.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import openmm as mm

from ..arena import JAC, POS, XI, Arena, f1, f2, f3, i1
from ..cvs import torsions_packed
from ..fes import CZARStats, Grid, Poisson2D, connected_regions, integrate_1d, joining_level, main_region
from ..fastcv import CVEvaluator, aligned_mlp_packed

_NOISE_BLOCK = 8192
_POSITIONS = mm.State.Positions
# arena slots of the eABF step (POS, XI, JAC: see cvflow.arena)
FORCES, LAM, VLAM, NOISE, PRM, MINS, WIDTHS, PERIODS, ABF_SUM, CZAR_SUM, LOOP, LAM_PREV = range(3, 15)
NBINS, ABF_COUNT, CZAR_COUNT, ROW = range(15, 19)
COEF = 19  # scratch: κ(ξ − λ) per dimension
APPLIED = 20  # projected ABF: the force estimate applied per bin (nbins, dim)
FROZEN = 21  # the static bias potential B per bin centre (nbins,), used when prm[8] > 0


class BlowUpError(RuntimeError):
    """Non-finite CV, force or position during MD."""


@numba.njit(cache=True)
def _wrap(v, lo, period):
    """``v`` mapped into [lo, lo + period) when ``period`` > 0, else unchanged."""
    if period > 0.0:
        return lo + (v - lo) - period * np.floor((v - lo) / period)
    return v


@numba.njit(cache=True)
def _flat_bin(v, mins, widths, nb, periods):
    idx = 0
    for d in range(v.shape[0]):
        x = (_wrap(v[d], mins[d], periods[d]) - mins[d]) / widths[d]
        if periods[d] > 0.0 and x >= nb[d]:
            x = nb[d] - 1.0  # rounding at the top edge of a period
        if not (x >= 0.0 and x < nb[d]):
            return -1
        idx = idx * nb[d] + int(x)
    return idx


@numba.njit(cache=True)
def min_image(diff, period):
    """Nearest-image difference on a periodic dimension (``period`` 0: plain difference)."""
    if period > 0.0:
        return diff - period * np.floor(diff / period + 0.5)
    return diff


@numba.njit(cache=True)
def _applied_mean(n, s, full):
    """The ABF estimate as applied: the running mean, ramped in over ``full`` samples."""
    if n <= 0:
        return 0.0
    return s / full if n < full else s / n


@numba.njit(cache=True)
def _loop_index(bl, d, nb):
    """For periodic dimension d: which loop (the bin index along the other dimension)."""
    if nb.shape[0] == 1:
        return 0
    return bl % nb[1] if d == 0 else bl // nb[1]


@numba.njit(cache=True)
def loop_sums(abf_count, abf_sum, nb, periods, full):
    """Σ of the applied ABF estimate along each periodic loop, shape (dim, max bins)."""
    dim = nb.shape[0]
    out = np.zeros((dim, np.max(nb)))
    for bl in range(abf_count.shape[0]):
        for d in range(dim):
            if periods[d] > 0.0:
                out[d, _loop_index(bl, d, nb)] += _applied_mean(abf_count[bl], abf_sum[bl, d], full)
    return out


@numba.njit(cache=True)
def _interp_axis(v, lo, w, n, period):
    """Linear interpolation between bin centres along one axis: (k0, k1, t, inside) with
    the value (1 − t)·f[k0] + t·f[k1]; ``inside`` 0 where v lies beyond the outermost
    centres of a non-periodic axis (the value is held there, so its slope is 0)."""
    u = (v - lo) / w - 0.5
    if period > 0.0:
        k = np.floor(u)
        t = u - k
        k0 = int(k) % n
        return k0, (k0 + 1) % n, t, 1.0
    if u <= 0.0:
        return 0, 1, 0.0, 0.0
    if u >= n - 1.0:
        return n - 2, n - 1, 1.0, 0.0
    k0 = min(int(np.floor(u)), n - 2)
    return k0, k0 + 1, u - k0, 1.0


@numba.njit(cache=True)
def frozen_bias(lam, pot, mins, widths, nb, periods):
    """The static bias B(λ) and its gradient (g0, g1): B bilinear (linear in 1-D) between
    the centres of the bins, ``pot`` per bin (flat, row-major); 1 or 2 dimensions."""
    a0, b0, t0, in0 = _interp_axis(lam[0], mins[0], widths[0], nb[0], periods[0])
    if lam.shape[0] == 1:
        f0, f1_ = pot[a0], pot[b0]
        return (1.0 - t0) * f0 + t0 * f1_, in0 * (f1_ - f0) / widths[0], 0.0
    a1, b1, t1, in1 = _interp_axis(lam[1], mins[1], widths[1], nb[1], periods[1])
    n1 = nb[1]
    f00, f01 = pot[a0 * n1 + a1], pot[a0 * n1 + b1]
    f10, f11 = pot[b0 * n1 + a1], pot[b0 * n1 + b1]
    v = (1.0 - t0) * ((1.0 - t1) * f00 + t1 * f01) + t0 * ((1.0 - t1) * f10 + t1 * f11)
    g0 = in0 * ((1.0 - t1) * (f10 - f00) + t1 * (f11 - f01)) / widths[0]
    g1 = in1 * ((1.0 - t0) * (f01 - f00) + t0 * (f11 - f10)) / widths[1]
    return v, g0, g1


@numba.njit(cache=True)
def wall_energy(lam, mins, widths, nb, periods, wall):
    """W(λ): the harmonic walls at the edges of the non-periodic dimensions."""
    e = 0.0
    for d in range(lam.shape[0]):
        if periods[d] == 0.0:
            lo, hi = mins[d], mins[d] + widths[d] * nb[d]
            if lam[d] < lo:
                e += 0.5 * wall * (lo - lam[d]) ** 2
            elif lam[d] > hi:
                e += 0.5 * wall * (lam[d] - hi) ** 2
    return e


@numba.njit(cache=True)
def static_bias_energies(lams, pot, mins, widths, nb, periods, wall):
    """B(λ) + W(λ) for each row of ``lams``: the exponent of a frozen stage's weights, /β."""
    out = np.empty(lams.shape[0])
    for i in range(lams.shape[0]):
        out[i] = frozen_bias(lams[i], pot, mins, widths, nb, periods)[0] + wall_energy(
            lams[i], mins, widths, nb, periods, wall)
    return out


@numba.njit(cache=True)
def eabf_step(xi, jac, forces, lam, vlam, noise, prm, mins, widths, nb, periods,
              abf_count, abf_sum, czar_count, czar_sum, loop, coef, applied, frozen):
    """One eABF step. Writes the atom forces, advances λ, returns the coupling energy.

    ``prm`` = [kappa, mass, dt, exp(-γ dt), sqrt((1-a²) kT/m), fullsamples, wall_kappa,
    projected, static, stride]: ``dt`` is λ's step, the MD time step times the stride, and the
    force on the atoms is ``stride`` times the coupling's (an impulse every ``stride`` MD steps:
    multiple time stepping). With ``projected`` > 0, ``applied[bin]`` is added to the bin's estimate: the
    correction that made the estimate curl-free at the last projection
    (:meth:`NativeEABF.project`). With ``static`` > 0 the bias force on λ is −∇B of the
    frozen potential (:func:`frozen_bias` of ``frozen``) instead of the ABF estimate; the
    statistics are still gathered.
    On periodic dimensions (``periods[d]`` > 0) ξ − λ is the nearest image, λ stays in
    [min, max), the walls are off, and the CZAR sums take λ − ξ as the nearest image.

    On a periodic dimension the ABF force is made conservative: its mean along each loop
    (kept in ``loop``, see :func:`loop_sums`) is subtracted. A true mean force integrates
    to zero around a circle; without this, the drag of the physical system on λ enters
    the running estimate, ABF cancels it, and λ settles into a perpetual circulation (a
    non-equilibrium steady state that biases CZAR by several kT; seen on ψ of alanine
    dipeptide and on an angle on the entropic switch).
    """
    kappa, mass, dt, a, sig = prm[0], prm[1], prm[2], prm[3], prm[4]
    full, wall = prm[5], prm[6]
    dim = xi.shape[0]
    energy = 0.0
    for d in range(dim):
        diff = min_image(xi[d] - lam[d], periods[d])
        if not np.isfinite(diff):
            return np.nan
        coef[d] = kappa * diff
        energy += 0.5 * kappa * diff * diff
    k = forces.shape[0]
    scale = prm[9]
    for i in range(k):
        for r in range(3):
            acc = 0.0
            for d in range(dim):
                acc -= coef[d] * jac[d, i, r]
            forces[i, r] = scale * acc
    # statistics at (x_n, λ_n)
    bl = _flat_bin(lam, mins, widths, nb, periods)
    bz = _flat_bin(xi, mins, widths, nb, periods)
    if bz >= 0:
        czar_count[bz] += 1
        for d in range(dim):
            czar_sum[bz, d] -= coef[d]  # κ(λ − ξ) of this sample (CZAR's per-sample term)
    if bl >= 0:
        n = abf_count[bl]
        for d in range(dim):
            old = _applied_mean(n, abf_sum[bl, d], full)
            abf_sum[bl, d] += coef[d]
            if periods[d] > 0.0:
                loop[d, _loop_index(bl, d, nb)] += _applied_mean(n + 1, abf_sum[bl, d], full) - old
        abf_count[bl] = n + 1
    # force on λ: coupling, ABF bias (or the static bias), walls
    static = prm[8] > 0.0
    gb0, gb1 = 0.0, 0.0
    if static:
        _, gb0, gb1 = frozen_bias(lam, frozen, mins, widths, nb, periods)
    for d in range(dim):
        f = coef[d]
        if static:
            f -= gb0 if d == 0 else gb1
        elif bl >= 0 and abf_count[bl] > 0:
            f -= _applied_mean(abf_count[bl], abf_sum[bl, d], full)
            if periods[d] > 0.0:
                f += loop[d, _loop_index(bl, d, nb)] / nb[d]
            if prm[7] > 0.0:
                f -= applied[bl, d]
        lo = mins[d]
        hi = mins[d] + widths[d] * nb[d]
        if periods[d] == 0.0:
            if lam[d] < lo:
                f += wall * (lo - lam[d])
            elif lam[d] > hi:
                f -= wall * (lam[d] - hi)
        vlam[d] += dt * f / mass
        lam[d] += 0.5 * dt * vlam[d]
        vlam[d] = a * vlam[d] + sig * noise[d]
        lam[d] += 0.5 * dt * vlam[d]
        lam[d] = _wrap(lam[d], lo, periods[d])
    return energy


@numba.njit(cache=True)
def _eabf_packed(fb, ib):
    """:func:`eabf_step` on the arena; takes the next noise row and keeps λ_n in ``LAM_PREV``."""
    row = i1(ib, ROW)
    noise = f2(fb, ib, NOISE)[row[0]]
    row[0] += 1
    lam = f1(fb, ib, LAM)
    f1(fb, ib, LAM_PREV)[:] = lam
    return eabf_step(f1(fb, ib, XI), f3(fb, ib, JAC), f2(fb, ib, FORCES), lam, f1(fb, ib, VLAM), noise,
                     f1(fb, ib, PRM), f1(fb, ib, MINS), f1(fb, ib, WIDTHS), i1(ib, NBINS), f1(fb, ib, PERIODS),
                     i1(ib, ABF_COUNT), f2(fb, ib, ABF_SUM), i1(ib, CZAR_COUNT), f2(fb, ib, CZAR_SUM),
                     f2(fb, ib, LOOP), f1(fb, ib, COEF), f2(fb, ib, APPLIED), f1(fb, ib, FROZEN))


@numba.njit(cache=True)
def step_external(fb, ib):
    """eABF step for a CV evaluated outside the arena (values and Jacobian copied in)."""
    return _eabf_packed(fb, ib)


@numba.njit(cache=True)
def step_aligned_mlp(fb, ib):
    aligned_mlp_packed(fb, ib)
    return _eabf_packed(fb, ib)


@numba.njit(cache=True)
def step_torsions(fb, ib):
    torsions_packed(fb, ib)
    return _eabf_packed(fb, ib)


# CV kernel → the fused CV + eABF step. A CV kernel without an entry runs as a second call.
_FUSED = {aligned_mlp_packed: step_aligned_mlp, torsions_packed: step_torsions}


class NativeEABF:
    """eABF on a CV, as an OpenMM ``PythonForce``; owns λ, its thermostat and the statistics.

    Parameters
    ----------
    cv : CVEvaluator
        The CV; its ``particles`` are the atoms the force acts on.
    grid : Grid
        ABF and CZAR grid, in CV units.
    kappa : float, kJ/mol/cv²
    mass : float, kJ/mol ps²/cv²
    friction : float, 1/ps
        Friction of λ's own Langevin thermostat.
    temperature : float, K
    timestep : float, ps
    fullsamples : int
    seed : int
        Seed of λ's thermostat noise.
    report_interval : int
        Steps between rows of the CV time series (aligned with saved frames).
    stride : int
        Multiple time stepping: the bias is evaluated at every ``stride``-th MD step only (the
        MD loop leaves its force group out of the steps between, see
        :func:`cvflow.sampler.advance`), and there it applies ``stride`` times its force, while λ
        takes one step of ``stride`` × ``timestep``. ``report_interval`` and
        ``projection_interval`` must be multiples of it.
    freeze_fill : float, kJ/mol, optional
        A frozen bias (:meth:`freeze`) flattens λ's free energy up to this height above its
        lowest bin and no further; None: all of it.
    """

    name = "native"

    def __init__(self, cv: CVEvaluator, grid: Grid, kappa, mass, friction, temperature, timestep,
                 fullsamples, seed, report_interval, wall_kappa=None, start_lambda=None,
                 projection_interval: int | None = None, stride: int = 1, freeze_fill: float | None = None):
        from ..units import kT as _kT
        stride = int(stride)
        if stride < 1:
            raise ValueError(f"stride must be at least 1, not {stride}")
        for name, n in (("report_interval", report_interval), ("projection_interval", projection_interval)):
            if n and int(n) % stride:
                raise ValueError(f"{name} ({n}) is not a multiple of the bias stride ({stride})")
        timestep = timestep * stride  # λ's step: one per bias evaluation
        self.cv = cv
        self.grid = grid
        self._periods = np.ascontiguousarray(grid.periods, dtype=np.float64)
        self.dim = grid.dim
        if cv.dim != grid.dim:
            raise ValueError(f"the CV has {cv.dim} components but the grid has {grid.dim} dimensions")
        self.kT = _kT(temperature)
        self.kappa = float(kappa)
        a = np.exp(-friction * timestep)
        prm = np.array([kappa, mass, timestep, a, np.sqrt((1 - a * a) * self.kT / mass),
                        float(fullsamples), float(wall_kappa if wall_kappa is not None else kappa),
                        1.0 if projection_interval and grid.dim == 2 else 0.0, 0.0, float(stride)])
        self.seed = int(seed)
        self.report_interval = int(report_interval)
        nbins = int(np.prod(grid.bins))
        k = len(cv.particles)
        # every array of the per-step kernel lives in one arena: one numba call with two arguments
        arena = Arena()
        for slot, a in ((POS, np.zeros((k, 3))), (XI, np.zeros(self.dim)), (JAC, np.zeros((self.dim, k, 3))),
                        (FORCES, np.zeros((k, 3))), (LAM, np.zeros(self.dim)), (VLAM, np.zeros(self.dim)),
                        (NOISE, np.zeros((_NOISE_BLOCK, self.dim))), (PRM, prm), (MINS, grid.mins),
                        (WIDTHS, grid.widths), (PERIODS, self._periods), (ABF_SUM, np.zeros((nbins, self.dim))),
                        (CZAR_SUM, np.zeros((nbins, self.dim))), (LOOP, np.zeros((self.dim, int(np.max(grid.bins))))),
                        (LAM_PREV, np.zeros(self.dim)), (NBINS, np.asarray(grid.bins, np.int64)),
                        (ABF_COUNT, np.zeros(nbins, np.int64)), (CZAR_COUNT, np.zeros(nbins, np.int64)),
                        (ROW, np.zeros(1, np.int64)), (COEF, np.zeros(self.dim)),
                        (APPLIED, np.zeros((nbins, self.dim))), (FROZEN, np.zeros(nbins))):
            arena.add(slot, a)
        cv_kernel = cv.pack(arena)
        arena.build()
        self._fb, self._ib = arena.fbuf, arena.ibuf
        self._kernel = _FUSED.get(cv_kernel)
        self._cv_kernel = None if self._kernel is not None else cv_kernel
        if self._kernel is None:
            self._kernel = step_external
        # compile (or load from numba's cache) now rather than inside OpenMM's first force
        # callback, so that the first MD step is not a compile of several seconds. The
        # per-step calls go to the compiled entry points, past numba's type dispatch
        # (0.3 µs a call): the two buffers are ours and never change type.
        sig = (numba.typeof(self._fb), numba.typeof(self._ib))
        self._step = self._kernel.compile(sig)
        self._cv_step = self._cv_kernel.compile(sig) if self._cv_kernel is not None else None
        (self._pos, self._xi, self._jac, self._forces, self.lam, self.vlam, self._noise, self.prm, self._lam_prev,
         self.abf_count, self.abf_sum, self.czar_count, self.czar_sum, self._loop, self._row, self.applied,
         self.frozen) = (
            arena.view(s) for s in (POS, XI, JAC, FORCES, LAM, VLAM, NOISE, PRM, LAM_PREV, ABF_COUNT, ABF_SUM,
                                     CZAR_COUNT, CZAR_SUM, LOOP, ROW, APPLIED, FROZEN))
        # projected ABF (2-D grids): every ``projection_interval`` steps the applied force on
        # λ becomes the gradient of the Poisson-integrated running estimate
        self.projection_interval = int(projection_interval) if self.prm[7] > 0 else 0
        self._poisson = Poisson2D(grid.widths, grid.periodic) if self.projection_interval else None
        self._regions_key, self._regions = None, None  # the visited bins' connected regions, cached
        self.frozen_history: list[tuple[int, np.ndarray]] = []  # (first step, B per bin) of each freeze
        self.frozen_levels: list[np.ndarray] = []  # (basins' cut, their joining level, fill applied) of each
        self.freeze_fill = None if freeze_fill is None else float(freeze_fill)
        if self._poisson is not None:  # its compiled parts (connected_regions' too) compiled or loaded here, not in MD
            self._poisson.integrate(np.zeros((2, 2, 2)), np.ones((2, 2), bool))
        if start_lambda is not None:
            self.lam[:] = start_lambda
        self.initialised = start_lambda is not None
        self.noise_counter = 0  # number of λ steps taken: fixes the noise stream position
        self._noise_end = 0  # noise_counter at which the loaded noise block runs out
        self._scratch = np.zeros((k, 3))
        self._last_step = -1
        self._energy = 0.0
        self._colvar: list[np.ndarray] = []
        self._vlam_init_rng = np.random.default_rng([self.seed, 2**31])
        self.error: str | None = None

    # -- OpenMM ---------------------------------------------------------------------------
    def make_force(self) -> mm.PythonForce:
        force = mm.PythonForce(self)
        force.setParticles([int(i) for i in self.cv.particles])
        force.setName("cvflow-eABF")
        return force

    def _load_noise(self) -> None:
        """The block of λ-thermostat noise that holds step ``noise_counter`` (restart-exact)."""
        block, row = divmod(self.noise_counter, _NOISE_BLOCK)
        self._noise[...] = np.random.default_rng([self.seed, block]).standard_normal((_NOISE_BLOCK, self.dim))
        self._noise_end = (block + 1) * _NOISE_BLOCK
        self._row[0] = row

    def __call__(self, state):
        # the per-step path: every line here costs on each MD step (see scripts/bench.py)
        step = state.getStepCount()
        if step == self._last_step:
            state._getVectorAsNumpy(_POSITIONS, self._scratch)
            if np.array_equal(self._scratch, self._pos):
                return self._energy, self._forces
            # same step, new positions (a re-evaluation, e.g. after setPositions):
            # forces at the current λ, without advancing λ or sampling (an impulse of stride
            # times the force, as at any bias step)
            energy, forces = self._evaluate(self._scratch.copy(), lam=self._lam_prev)
            return energy, forces * self.stride
        state._getVectorAsNumpy(_POSITIONS, self._pos)
        self._last_step = step
        if not self.initialised:
            self._initialise()
        if self.noise_counter >= self._noise_end:
            self._load_noise()
        if self.projection_interval and step % self.projection_interval == 0 and not self.is_frozen:
            self.project()
        if self._cv_step is not None:
            self._cv_step(self._fb, self._ib)
        elif self._kernel is step_external:
            self._xi[:], self._jac[...] = self.cv(self._pos)
        try:
            energy = self._step(self._fb, self._ib)
        except Exception as e:  # e.g. a division by zero in the CV kernel on wild positions
            energy = math.nan
            self.error = f"{type(e).__name__} in the bias kernel at step {step}: {e}"
        self.noise_counter += 1
        if step % self.report_interval == 0:
            self._colvar.append(np.concatenate([[step], self._xi, self._lam_prev]))
        if not math.isfinite(energy):
            if self.error is None:
                self.error = f"non-finite CV value {self._xi.tolist()} at step {step}"
            self._forces[:] = 0.0
            energy = 0.0
        self._energy = energy
        return energy, self._forces

    def project(self) -> None:
        """Projected ABF: remove the curl of the running estimate.

        In two dimensions the bin-wise running means are a noisy estimate of a gradient, and
        their curl is not noise alone: where λ crosses between two states that ξ separates
        sharply, the states' hysteresis writes a circulation into the estimate (up to 7
        kJ/mol around 3 × 3 bins on alanine dipeptide's learned CVs), and λ driven by a
        non-conservative force is out of equilibrium, which the reweighting assumes it is
        not. The gradient of the least-squares (Poisson) integral of the applied estimate,
        on its main connected region, has no curl (Colvars' projected ABF, pABF, applies the
        same). The difference between the two is stored and added to each bin's running
        estimate until the next projection, so that newly visited bins and the ramp-in
        respond at once, as in plain ABF; bins outside the region get no correction."""
        est, main = self._applied_estimate()
        corr = np.zeros_like(est)
        if main.sum() >= 2:
            corr = np.where(main[..., None], self._poisson.project(est, main) - est, 0.0)
        self.applied[...] = corr.reshape(self.applied.shape)

    def _applied_estimate(self) -> tuple[np.ndarray, np.ndarray]:
        """The running ABF estimate as the kernel applies it (the ramp over ``fullsamples``,
        the periodic loop terms), shape (*bins, dim), and the main connected region of the
        visited bins."""
        nb = tuple(int(b) for b in self.grid.bins)
        count = self.abf_count.reshape(nb)
        est = self.abf_sum.reshape(nb + (self.dim,)) / np.maximum(count, self.prm[5])[..., None]
        if self._periods[0] > 0:  # the kernel's loop terms: the estimate as applied
            if self.dim == 1:
                est[..., 0] -= self._loop[0, 0] / nb[0]
            else:
                est[..., 0] -= self._loop[0, :nb[1]][None, :] / nb[0]
        if self.dim > 1 and self._periods[1] > 0:
            est[..., 1] -= self._loop[1, :nb[0]][:, None] / nb[1]
        visited = count > 0
        key = visited.tobytes()
        if key != self._regions_key:  # the labels change only when a new bin is visited
            self._regions, self._regions_key = connected_regions(visited, self.grid.periodic), key
        return est, main_region(self._regions, count)

    @property
    def stride(self) -> int:
        """MD steps per bias evaluation (multiple time stepping; the kernel's ``prm[9]``)."""
        return int(self.prm[9])

    @property
    def is_frozen(self) -> bool:
        return bool(self.prm[8] > 0)

    def freeze(self, step: int = 0) -> np.ndarray:
        """Make the bias static from here on: B(λ), the least-squares integral of the
        running estimate as applied (its curl-free part) on the main region of visited bins,
        each other bin taking the value of the nearest bin of that region. B is applied
        with its exact gradient (:func:`frozen_bias`), so the frames that follow have the
        exact weights e^{β[B(λ) + W(λ)]}. Returns B on the grid (kJ/mol, minimum 0).

        With ``freeze_fill``, B flattens the free energy A = max B − B only up to that height
        above its lowest bin: B is raised to at least max B − fill, so where A is higher the
        excess is left. Such regions carry under e^{−β fill} of the weight, and a B that
        fills them in full (an estimate that runs away where ξ saturates and λ goes past
        it) can hold the system there (README, "A ceiling on the frozen bias"). The weights
        stay exact: they use the B that is applied. The fill is raised, where needed, to
        1 kT above the level at which the basins holding 99.9 % of λ's weight join
        (:func:`cvflow.fes.joining_level`): the ceiling leaves out regions without weight
        but never a barrier between the states. Each freeze's cut, joining level and fill
        are kept (``frozen_levels``).

        A frozen bias still gathers the statistics, so it can be frozen again later from
        them (``step``, the segment's step from which the new B acts): each B and its first
        step are kept (:meth:`frozen_record`), and the frames are weighted by all of them
        together (:func:`cvflow.dataset.log_weights_frozen`)."""
        if self.dim > 2:
            raise ValueError("a frozen bias needs a CV of 1 or 2 dimensions")
        from scipy import ndimage
        est, main = self._applied_estimate()
        if main.sum() < 2:
            raise ValueError("the bias cannot be frozen: fewer than two bins of the grid were visited")
        if self.dim == 1:
            pot = integrate_1d(est[:, 0], float(self.grid.widths[0]), main, periodic=bool(self._periods[0] > 0))
        else:
            pot = (self._poisson or Poisson2D(self.grid.widths, self.grid.periodic)).integrate(est, main)
        # est is the mean of κ(ξ − λ), the negative gradient of λ's free energy: its integral
        # is −A, the bias that flattens it
        idx = ndimage.distance_transform_edt(~main, return_distances=False, return_indices=True)
        pot = pot[tuple(idx)]
        cut, joins = joining_level(pot.max() - pot, self.grid.periodic, self.kT)
        fill = self.freeze_fill
        if fill is not None:
            fill = max(fill, joins + self.kT)  # never under the saddle between the weighted basins
            pot = np.maximum(pot, pot.max() - fill)
        pot = pot - pot.min()
        self.frozen[:] = pot.ravel()
        self.prm[8] = 1.0
        earlier = [i for i, (s, _) in enumerate(self.frozen_history) if s < step]
        self.frozen_history = [self.frozen_history[i] for i in earlier] + [(int(step), pot.ravel().copy())]
        self.frozen_levels = [self.frozen_levels[i] for i in earlier] + [
            np.array([cut, joins, np.nan if fill is None else fill])]
        return pot

    @property
    def fill_raised(self) -> bool:
        """Whether the last freeze raised ``freeze_fill`` to clear the saddle between the
        basins that carry λ's weight (:meth:`freeze`)."""
        return bool(self.frozen_levels) and self.freeze_fill is not None and \
            self.frozen_levels[-1][2] > self.freeze_fill

    @property
    def last_freeze_step(self) -> int:
        """The step from which the current frozen bias acts (−1 when it is not frozen)."""
        return self.frozen_history[-1][0] if self.frozen_history else -1

    def frozen_record(self) -> dict:
        """What weights a frozen stage's frames: B per bin, the grid and the walls' κ
        (``frozen_bias.npz``; :func:`cvflow.dataset.log_weights_frozen`)."""
        starts, pots = self._history_arrays()
        return {"potential": self.frozen, "mins": self.grid.mins, "widths": self.grid.widths,
                "bins": np.asarray(self.grid.bins, np.int64), "periods": self._periods,
                "wall_kappa": np.array(self.prm[6]), "potentials": pots, "starts": starts,
                "fill": np.array(np.nan if self.freeze_fill is None else self.freeze_fill),
                # per freeze, kJ/mol above λ's lowest free energy: the level under which the
                # grid holds 99.9 % of the weight, the level at which those basins join, and
                # the fill as applied (raised to 1 kT over the joining level where needed)
                "levels": self._levels_array()}

    def _levels_array(self) -> np.ndarray:
        """``frozen_levels`` as a (K, 3) array, a row per freeze (NaN for freezes loaded from a
        checkpoint written before they were kept)."""
        return np.reshape(self.frozen_levels, (len(self.frozen_levels), 3))

    def _history_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The frozen biases so far: their first steps (K,) and B per bin (K, bins)."""
        starts = np.array([s for s, _ in self.frozen_history], np.int64)
        pots = np.array([b for _, b in self.frozen_history]).reshape(len(starts), self.frozen.size)
        return starts, pots

    def _initialise(self) -> None:
        """λ starts at ξ(x) of the first frame, its velocity from the Maxwell distribution."""
        xi, _ = self.cv(self._pos)
        self.lam[:] = [_wrap(v, lo, p) for v, lo, p in zip(xi, self.grid.mins, self._periods)]
        self.vlam[:] = self._vlam_init_rng.standard_normal(self.dim) * np.sqrt(self.kT / self.prm[1])
        self.initialised = True

    def _evaluate(self, pos, lam=None):
        """Coupling energy and forces at ``lam`` (default: the current λ); no side effects."""
        xi, jac = self.cv(pos)
        diff = xi - (self.lam if lam is None else lam)
        periods = self.grid.periods
        diff = np.where(periods > 0, diff - periods * np.floor(diff / np.where(periods > 0, periods, 1) + 0.5), diff)
        forces = -(self.kappa * diff)[:, None, None] * jac
        return 0.5 * self.kappa * float(diff @ diff), forces.sum(0)

    def coupling(self, pos) -> tuple[float, np.ndarray]:
        """Coupling energy κ/2 |ξ − λ|² and forces on ``particles`` at the current λ (no side effects)."""
        return self._evaluate(np.asarray(pos, np.float64))

    # -- results and checkpoints ------------------------------------------------------------
    def peek_colvar(self) -> np.ndarray:
        """The CV time series rows collected since the last :meth:`take_colvar`, left in place."""
        return np.array(self._colvar).reshape(-1, 1 + 2 * self.dim)

    def take_colvar(self) -> np.ndarray:
        """CV time series rows ``(step, ξ..., λ...)`` collected since the last call."""
        rows = np.array(self._colvar).reshape(-1, 1 + 2 * self.dim)
        self._colvar = []
        return rows

    def czar(self) -> CZARStats:
        shape = tuple(self.grid.bins)
        return CZARStats(self.grid, self.kappa, self.kT, self.czar_count.reshape(shape).copy(),
                         self.czar_sum.reshape(shape + (self.dim,)).copy())

    def lambda_stats(self) -> CZARStats:
        """The ABF statistics per bin of λ (every step): the count and Σ κ(λ − ξ), in the
        container CZAR uses (binned by λ here, not by ξ). Their mean is the gradient of the
        extended variable's free energy, which the default reweighting integrates
        (:func:`cvflow.dataset.log_weights_extended`)."""
        shape = tuple(self.grid.bins)
        return CZARStats(self.grid, self.kappa, self.kT, self.abf_count.reshape(shape).copy(),
                         -self.abf_sum.reshape(shape + (self.dim,)).copy())

    def soften(self, factor: float) -> None:
        """Scale the coupling κ by ``factor`` (< 1 after a blow-up), and λ's mass with it so
        that the period τ of λ in the coupling well stays the same. The walls stay."""
        kappa, mass = self.prm[0] * factor, self.prm[1] * factor
        a = self.prm[3]
        self.prm[0], self.prm[1] = kappa, mass
        self.prm[4] = np.sqrt((1 - a * a) * self.kT / mass)
        self.kappa = float(kappa)

    def state_arrays(self) -> dict:
        starts, pots = self._history_arrays()
        return {"lam": self.lam, "vlam": self.vlam, "abf_count": self.abf_count, "abf_sum": self.abf_sum,
                "prm": self.prm,
                # the last evaluation: a checkpoint taken after it (step 0 is evaluated when the
                # velocities are set) must not sample that step again when it is loaded
                "last_step": np.array(self._last_step), "pos": self._pos, "forces": self._forces,
                "energy": np.array(self._energy),
                "czar_count": self.czar_count, "czar_sum": self.czar_sum, "applied": self.applied,
                "frozen": self.frozen, "frozen_starts": starts, "frozen_history": pots,
                "frozen_levels": self._levels_array(),
                "noise_counter": np.array(self.noise_counter), "initialised": np.array(self.initialised),
                "vlam_rng": np.array(str(self._vlam_init_rng.bit_generator.state))}

    def continue_from(self, d) -> None:
        """Go on from another segment's final bias state (``bias_state.npz``): λ, its
        velocity and the statistics carry over; the step count starts afresh."""
        self.load_state_arrays(d)
        self._last_step = -1
        self.frozen_history, self.frozen_levels = [], []  # a new segment: its own frozen biases, if any

    def load_state_arrays(self, d) -> None:
        for key in ("lam", "vlam", "abf_count", "abf_sum", "czar_count", "czar_sum"):
            getattr(self, key)[...] = d[key]
        if "prm" in d.files:  # κ, λ's mass and noise may have been softened after a blow-up
            self.prm[:len(d["prm"])] = d["prm"]
            self.kappa = float(self.prm[0])
        self.error = None
        self._loop[...] = loop_sums(self.abf_count, self.abf_sum, self.grid.bins, self._periods, self.prm[5])
        if "frozen" in d.files:
            self.frozen[...] = d["frozen"]
        self.frozen_history = []
        if "frozen_starts" in d.files:
            self.frozen_history = [(int(s), np.array(b)) for s, b in zip(d["frozen_starts"], d["frozen_history"])]
        elif self.is_frozen:  # a checkpoint from before the history was kept: B from the start
            self.frozen_history = [(0, self.frozen.copy())]
        levels = d["frozen_levels"] if "frozen_levels" in d.files else np.full((len(self.frozen_history), 3), np.nan)
        self.frozen_levels = [np.array(row) for row in levels]
        if "applied" in d.files:
            self.applied[...] = d["applied"]
        elif self.projection_interval:  # a checkpoint from before projected ABF: project now,
            self.project()               # from the loaded statistics and loop sums
        self.noise_counter = int(d["noise_counter"])
        self._noise_end = 0
        self.initialised = bool(d["initialised"])
        import ast
        self._vlam_init_rng.bit_generator.state = ast.literal_eval(str(d["vlam_rng"]))
        self._last_step = -1
        if "last_step" in d.files:
            self._last_step = int(d["last_step"])
            self._pos[...], self._forces[...] = d["pos"], d["forces"]
            self._energy = float(d["energy"])
        self._colvar = []
