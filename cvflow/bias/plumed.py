"""The PLUMED engine: eABF through DRR, on the CV loaded with PYTORCH_MODEL.

**The kernel.** PLUMED is found through ``PLUMED_KERNEL`` (the path of
``libplumedKernel.so``), the convention of PLUMED's own wrappers. ``scripts/install-plumed.sh``
builds one with the DRR, PYTORCH and OPES modules against the installed torch.

**Driving it.** With ``openmmplumed`` importable, its ``PlumedForce`` runs the generated
``plumed.dat``. Otherwise an OpenMM ``PythonForce`` hands positions, masses, box and step
to the kernel and takes forces and the bias energy back. The kernel is called through its
C entry points with ``ctypes``, which releases the GIL for the call: PYTORCH_MODEL's
autograd refuses to run while the GIL is held in a process that has imported Python
torch ("The autograd engine was called while holding the GIL"), which is what the Cython
``plumed`` wrapper does. The ``plumed`` package is used to report the kernel's version.

**The CV's inputs.** Raw ``POSITION`` values (``NOPBC``) of the atoms the CV uses, with
the Kabsch alignment inside the TorchScript model. Chosen over ``FIT_TO_TEMPLATE`` because
the alignment is then the very code (centring, unweighted Kabsch) that the autoencoder
was trained on and that the native engine runs; ``FIT_TO_TEMPLATE`` would weight atoms by
the template's occupancy/beta columns and move the whole system, a second definition of
the same CV to keep in step. ``WHOLEMOLECULES`` keeps the CV's atoms whole in a periodic box.
Torsion CVs (``cvflow make-cv torsions``) become PLUMED ``TORSION`` actions.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm as mm

from ..fes import CZARStats, Grid

INSTALL_HINT = ("build a kernel with 'scripts/install-plumed.sh' (about 20 minutes on 2 cores) and "
                "export PLUMED_KERNEL as it prints")
DEFAULT_PREFIX = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "cvflow" / "plumed"


@dataclass
class PlumedStatus:
    usable: bool
    reason: str
    kernel: str | None = None
    version: str | None = None


class PlumedError(RuntimeError):
    """PLUMED reported an error (bad input line, missing module, ...)."""


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class _Nothrow(ctypes.Structure):  # plumed_nothrow_handler
    _fields_ = [("ptr", ctypes.c_void_p), ("handler", _HANDLER)]


_CMD_NOTHROW = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, _Nothrow)


class _SymbolTable(ctypes.Structure):  # the head of plumed_symbol_table_type (Plumed.h)
    _fields_ = [("version", ctypes.c_int),
                ("create", ctypes.c_void_p), ("cmd", ctypes.c_void_p), ("finalize", ctypes.c_void_p),
                ("cmd_nothrow", _CMD_NOTHROW)]


class CPlumed:
    """One PLUMED object, driven through the kernel's C entry points.

    ``cmd`` goes through the symbol table's ``cmd_nothrow`` (PLUMED errors come back as
    :class:`PlumedError`, not as C++ exceptions through ctypes), called as a ctypes
    CFUNCTYPE function, which releases the GIL for the call.
    """

    _libs: dict = {}

    def __init__(self, kernel: str):
        lib = CPlumed._libs.get(kernel)
        if lib is None:
            lib = ctypes.CDLL(kernel, mode=ctypes.RTLD_GLOBAL)
            lib.plumed_plumedmain_create.restype = ctypes.c_void_p
            lib.plumed_plumedmain_finalize.argtypes = [ctypes.c_void_p]
            table = _SymbolTable.in_dll(lib, "plumed_symbol_table")
            if table.version < 2:
                raise OSError(f"PLUMED kernel {kernel} is too old (symbol table version {table.version})")
            CPlumed._libs[kernel] = (lib, table.cmd_nothrow)
            lib = CPlumed._libs[kernel]
        self._lib, self._cmd = lib
        self._errors: list[str] = []

        def on_error(_ptr, code, msg, _opt):
            self._errors.append(msg.decode(errors="replace") if msg else f"error code {code}")
        self._handler = _HANDLER(on_error)
        self._nothrow = _Nothrow(None, self._handler)
        self._p = self._lib.plumed_plumedmain_create()
        self._keep = []  # keep Python objects alive while PLUMED holds pointers to them

    def cmd(self, key: str, value=None) -> None:
        if value is None:
            ptr = None
        elif isinstance(value, np.ndarray):
            if not value.flags.c_contiguous:
                raise ValueError(f"{key}: array must be C-contiguous")
            ptr = value.ctypes.data
        elif isinstance(value, str):
            buf = ctypes.create_string_buffer(value.encode())
            self._keep.append(buf)
            ptr = ctypes.addressof(buf)
        elif isinstance(value, bool | int):
            buf = ctypes.c_int(int(value))
            self._keep.append(buf)
            ptr = ctypes.addressof(buf)
        elif isinstance(value, float):
            buf = ctypes.c_double(value)
            self._keep.append(buf)
            ptr = ctypes.addressof(buf)
        else:
            ptr = ctypes.addressof(value)
        self._cmd(self._p, key.encode(), ptr, self._nothrow)
        if len(self._keep) > 64:
            self._keep = self._keep[-8:]
        if self._errors:
            msg = self._errors[0]
            self._errors.clear()
            raise PlumedError(f"PLUMED ({key}): {msg.strip()}")

    def finalize(self) -> None:
        if self._p:
            self._lib.plumed_plumedmain_finalize(self._p)
            self._p = None

    def __del__(self):
        try:
            self.finalize()
        except Exception:
            pass


def find_kernel() -> str | None:
    return os.environ.get("PLUMED_KERNEL") or None


def plumed_status(check_modules: bool = True) -> PlumedStatus:
    """Whether a PLUMED kernel with the DRR and PYTORCH modules is usable, and why not."""
    kernel = find_kernel()
    if not kernel:
        built = DEFAULT_PREFIX / "lib" / "libplumedKernel.so"
        hint = (f"a kernel built by install-plumed is at {built}: export PLUMED_KERNEL={built}"
                if built.is_file() else INSTALL_HINT)
        return PlumedStatus(False, f"no PLUMED kernel found (PLUMED_KERNEL is not set); {hint}")
    if not os.path.isfile(kernel):
        return PlumedStatus(False, f"PLUMED_KERNEL points to a missing file: {kernel}; {INSTALL_HINT}", kernel)
    try:
        p = CPlumed(kernel)
    except OSError as e:
        return PlumedStatus(False, f"the PLUMED kernel {kernel} does not load: {str(e)[:200]}", kernel)
    except AttributeError:
        return PlumedStatus(False, f"{kernel} is not a PLUMED kernel (no plumed_plumedmain_* entry points)", kernel)
    version = _kernel_version(p)
    if check_modules:
        for action, module, line in (
                ("DRR", "drr", "DRR ARG=d GRID_MIN=0 GRID_MAX=1 GRID_BIN=10 TEMP=300 OUTPUTFREQ=1000000000"),
                ("PYTORCH_MODEL", "pytorch", "m: PYTORCH_MODEL FILE=/nonexistent/model.pt ARG=d")):
            err = _probe_action(kernel, line)
            if err and "is not known" in err:
                return PlumedStatus(False, f"the PLUMED kernel {kernel} has no {action} action "
                                           f"(module '{module}' not enabled); {INSTALL_HINT}", kernel, version)
    return PlumedStatus(True, f"kernel {kernel} (PLUMED {version}) with DRR and PYTORCH_MODEL", kernel, version)


def _kernel_version(p: CPlumed) -> str:
    v = ctypes.c_int(0)
    p.cmd("getApiVersion", v)
    return f"API {v.value}"


def _probe_action(kernel: str, line: str) -> str | None:
    """Read one action line into a scratch PLUMED; return PLUMED's error, if any."""
    import tempfile
    p = CPlumed(kernel)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            p.cmd("setMDEngine", "cvflow")
            p.cmd("setNatoms", 2)
            p.cmd("setTimestep", 0.002)
            p.cmd("setKbT", 2.494)
            p.cmd("setLogFile", os.path.join(tmp, "log"))
            p.cmd("init")
            p.cmd("readInputLine", "d: DISTANCE ATOMS=1,2")
            p.cmd("readInputLine", line)
            return None
        except PlumedError as e:
            return str(e)
        finally:
            p.finalize()


def plumed_version() -> str | None:
    st = plumed_status(check_modules=False)
    return st.version if st.kernel else None


# ------------------------------------------------------------------------------------------
# the CV as PLUMED sees it

def write_plumed_cv(cv_path, particles, n_atoms: int, out_path) -> Path:
    """A float32 TorchScript model for PYTORCH_MODEL: (1, 3k) positions of ``particles`` → (1, d)."""
    import torch
    from ..artifacts import atomic_path
    from .plumed_model import PlumedInput
    inner = torch.jit.load(str(cv_path), map_location="cpu")
    module = torch.jit.script(PlumedInput(inner, np.asarray(particles, np.int64), n_atoms))
    with atomic_path(out_path) as tmp:
        module.save(str(tmp))
    return Path(out_path)


@dataclass
class PlumedInputSpec:
    """What goes into ``plumed.dat``: the CV, the grid and the eABF settings."""
    cv_kind: str                  # "torch" or "torsions"
    particles: np.ndarray         # 0-based atom indices the CV reads
    quads: np.ndarray | None      # torsions: (d, 4) 0-based
    model_file: str               # file name of the PYTORCH_MODEL model, relative to plumed.dat
    dim: int
    grid: Grid
    kappa: float
    tau: float
    friction: float
    temperature: float
    fullsamples: int
    wall_kappa: float
    output_freq: int
    report_interval: int
    periodic_box: bool


def plumed_input(spec: PlumedInputSpec, label: str = "eabf", output_prefix: str | None = None,
                 colvar_file: str = "COLVAR", model_dir: str | None = None) -> str:
    """The text of ``plumed.dat`` (atom numbers are PLUMED's, 1-based, of the whole system).

    With the defaults, file names are relative (a ``plumed.dat`` to take to GROMACS or
    LAMMPS with the model file beside it); cvflow's own runs pass absolute ones.
    """
    model = spec.model_file if model_dir is None else str(Path(model_dir) / spec.model_file)
    g = spec.grid
    lines = [
        "# cvflow: extended-system ABF (DRR) on the learned CV, with the CZAR estimator.",
        "# Units: nm, ps, kJ/mol (PLUMED's defaults, as in OpenMM and GROMACS).",
    ]
    if spec.cv_kind == "torsions":
        args = []
        for i, q in enumerate(spec.quads):
            lines.append(f"t{i + 1}: TORSION ATOMS={','.join(str(int(a) + 1) for a in q)}")
            args.append(f"t{i + 1}")
    else:
        lines.append("# CV inputs: raw positions of the CV's atoms; the Kabsch alignment is inside the model.")
        atoms = ",".join(str(int(a) + 1) for a in spec.particles)
        if spec.periodic_box:
            lines.append(f"WHOLEMOLECULES ENTITY0={atoms}")
        pos_args = []
        for a in spec.particles:
            lines.append(f"p{int(a) + 1}: POSITION ATOM={int(a) + 1} NOPBC")
            pos_args += [f"p{int(a) + 1}.{c}" for c in "xyz"]
        lines.append(f"model: PYTORCH_MODEL FILE={model} ARG={','.join(pos_args)}")
        args = []
        for i in range(spec.dim):
            lines.append(f"cv{i + 1}: COMBINE ARG=model.node-{i} PERIODIC=NO")
            args.append(f"cv{i + 1}")
    fmt = lambda xs: ",".join(f"{x:.12g}" for x in xs)  # noqa: E731
    lines += [
        "DRR ...",
        f"  LABEL={label}",
        f"  ARG={','.join(args)}",
        f"  GRID_MIN={fmt(g.mins)}",
        f"  GRID_MAX={fmt(g.maxs)}",
        f"  GRID_BIN={','.join(str(int(b)) for b in g.bins)}",
        f"  KAPPA={fmt([spec.kappa] * spec.dim)}",
        f"  TAU={fmt([spec.tau] * spec.dim)}",
        f"  FRICTION={fmt([spec.friction] * spec.dim)}",
        f"  TEMP={spec.temperature:.12g}",
        f"  FULLSAMPLES={int(spec.fullsamples)}",
        f"  OUTPUTFREQ={int(spec.output_freq)}",
        f"  OUTPUTPREFIX={output_prefix or label}",
        "  TEXTOUTPUT",
        "... DRR",
    ]
    for i, a in enumerate(args):
        if not g.periodic[i] and spec.cv_kind != "torsions":
            # cvflow's walls: 0.5 k (λ − edge)²; PLUMED's: KAPPA (λ − AT)², hence k/2
            lines.append(f"uw{i + 1}: UPPER_WALLS ARG={label}.{a}_fict AT={g.maxs[i]:.12g} KAPPA={spec.wall_kappa / 2:.12g}")
            lines.append(f"lw{i + 1}: LOWER_WALLS ARG={label}.{a}_fict AT={g.mins[i]:.12g} KAPPA={spec.wall_kappa / 2:.12g}")
    colvar = ",".join(args + [f"{label}.{a}_fict" for a in args])
    lines.append(f"PRINT STRIDE={int(spec.report_interval)} ARG={colvar} FILE={colvar_file} FMT=%.10g")
    lines.append(f"FLUSH STRIDE={int(spec.output_freq)}")
    return "\n".join(lines) + "\n"


class DRRCzar(CZARStats):
    """CZAR results of DRR: its gradient (from ``.czar.grad``) and counts on cvflow's grid."""

    def __init__(self, grid: Grid, kappa: float, kT: float, count: np.ndarray, grad: np.ndarray):
        super().__init__(grid, kappa, kT, count, np.full(count.shape + (grid.dim,), np.nan))
        self._grad = grad

    def gradient(self, min_count: int = 1):
        mask = (self.count >= min_count) & np.all(np.isfinite(self._grad), axis=-1)
        return self._grad, mask

    def merge(self, other):
        raise NotImplementedError("DRR's CZAR output holds gradients, not additive sums; "
                                  "merge walkers with the native engine")


def read_drr_czar(prefix, grid: Grid, kappa: float, kT: float) -> DRRCzar:
    """DRR's text CZAR output (``<prefix>.czar.grad`` and ``.czar.count``) on cvflow's grid."""
    grad_rows = np.loadtxt(f"{prefix}.czar.grad", comments="#", ndmin=2)
    count_rows = np.loadtxt(f"{prefix}.czar.count", comments="#", ndmin=2)
    d = grid.dim
    shape = tuple(int(b) for b in grid.bins)
    if len(grad_rows) != int(np.prod(shape)):
        raise RuntimeError(f"{prefix}.czar.grad has {len(grad_rows)} bins, the grid has {int(np.prod(shape))}")
    # DRR writes the bins with the first CV varying slowest, as numpy's C order; check it
    centres = grid.mesh().reshape(-1, d)
    if not np.allclose(grad_rows[:, :d], centres, atol=1e-6 * max(1.0, float(np.abs(centres).max()))):
        order = np.lexsort(tuple(grad_rows[:, i] for i in reversed(range(d))))
        grad_rows, count_rows = grad_rows[order], count_rows[order]
    grad = grad_rows[:, d:].reshape(shape + (d,))
    count = count_rows[:, d].reshape(shape)
    return DRRCzar(grid, kappa, kT, count, grad)


class PlumedEABF:
    """eABF through PLUMED's DRR, with the same interface as :class:`~cvflow.bias.native.NativeEABF`."""

    name = "plumed"
    stride = 1  # the bias at every step (cvflow does not set PLUMED's own STRIDE)

    def __init__(self, spec: PlumedInputSpec, out_dir: Path, masses: np.ndarray, n_atoms: int, kernel: str,
                 timestep: float, kT: float, box: np.ndarray | None):
        self.spec = spec
        self.dim = spec.dim
        self.grid = spec.grid
        self.kappa = spec.kappa
        self.kT = kT
        self.dir = Path(out_dir) / "plumed"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = self.dir / "eabf"
        self.script = plumed_input(spec, output_prefix=str(self.prefix), colvar_file=str(self.dir / "COLVAR"),
                                   model_dir=str(self.dir))
        from ..artifacts import write_text
        write_text(self.dir / "plumed.dat", self.script)
        self.n_atoms = n_atoms
        self.particles = np.asarray(spec.particles, np.int64)
        self.kernel = kernel
        self.timestep = timestep
        self.box = box
        self.masses = np.ascontiguousarray(masses, np.float64)
        self._pos = np.zeros((n_atoms, 3))
        self._forces = np.zeros((n_atoms, 3))
        self._virial = np.zeros((3, 3))
        self._bias = np.zeros(1)
        self._scratch = np.zeros((len(self.particles), 3))
        self._last = np.zeros((len(self.particles), 3))
        self._last_step = -1
        self._result = (0.0, np.zeros((len(self.particles), 3)))
        self._step = ctypes.c_longlong(0)
        self._colvar_offset = 0
        self._p = None
        self.error: str | None = None

    def _plumed(self) -> CPlumed:
        if self._p is None:
            p = CPlumed(self.kernel)
            p.cmd("setMDEngine", "cvflow")
            p.cmd("setNatoms", self.n_atoms)
            p.cmd("setTimestep", float(self.timestep))
            p.cmd("setKbT", float(self.kT))
            p.cmd("setLogFile", str(self.dir / "plumed.log"))
            p.cmd("setPlumedDat", str(self.dir / "plumed.dat"))
            try:
                p.cmd("init")
            except PlumedError:
                p.finalize()
                raise
            self._p = p
        return self._p

    def make_force(self):
        try:
            from openmmplumed import PlumedForce
        except ImportError:
            force = mm.PythonForce(self)
            force.setParticles([int(i) for i in self.particles])
            force.setName("cvflow-eABF-plumed")
            return force
        force = PlumedForce(self.script)
        force.setTemperature(self.kT / 0.00831446261815324)
        return force

    def __call__(self, state):
        step = state.getStepCount()
        state._getVectorAsNumpy(mm.State.Positions, self._scratch)
        if step == self._last_step and np.array_equal(self._scratch, self._last):
            return self._result
        advance = step != self._last_step
        self._last[:] = self._scratch
        self._last_step = step
        p = self._plumed()
        self._pos[self.particles] = self._scratch
        self._forces[self.particles] = 0.0
        self._virial[:] = 0.0
        self._step.value = step
        p.cmd("setStepLong", self._step)
        if self.box is not None:
            box = np.ascontiguousarray(state.getPeriodicBoxVectors(asNumpy=True)._value, np.float64)
            p.cmd("setBox", box)
        p.cmd("setMasses", self.masses)
        p.cmd("setPositions", self._pos)
        p.cmd("setForces", self._forces)
        p.cmd("setVirial", self._virial)
        if advance:
            p.cmd("calc")
        else:  # a re-evaluation at the same step (e.g. after setPositions): no λ update
            p.cmd("prepareCalc")
            p.cmd("performCalcNoUpdate")
        p.cmd("getBias", self._bias)
        energy = float(self._bias[0])
        forces = self._forces[self.particles].copy()
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            self.error = f"non-finite PLUMED bias at step {step}"
            forces[:] = 0.0
            energy = 0.0
        self._result = (energy, forces)
        return self._result

    def finish(self, context) -> None:
        """One more evaluation at the final step, so that DRR writes its last CZAR output."""
        context.getState(getEnergy=True)
        if self._p is not None:
            self._p.finalize()
            self._p = None

    def take_colvar(self) -> np.ndarray:
        """Rows ``(step, ξ…, λ…)`` that PLUMED has written to COLVAR since the last call."""
        path = self.dir / "COLVAR"
        if not path.exists():
            return np.zeros((0, 1 + 2 * self.dim))
        with open(path) as fh:
            fh.seek(self._colvar_offset)
            text = fh.read()
        end = text.rfind("\n") + 1
        self._colvar_offset += len(text[:end].encode())
        rows = [ln.split() for ln in text[:end].splitlines() if ln.strip() and not ln.startswith("#")]
        if not rows:
            return np.zeros((0, 1 + 2 * self.dim))
        a = np.array(rows, float)
        a[:, 0] = np.round(a[:, 0] / self.timestep)
        return a[:, : 1 + 2 * self.dim]

    def czar(self) -> DRRCzar:
        return read_drr_czar(self.prefix, self.grid, self.kappa, self.kT)

    def state_arrays(self) -> dict:
        return {"colvar_offset": np.array(self._colvar_offset)}

    def load_state_arrays(self, d) -> None:
        raise RuntimeError("the PLUMED engine cannot resume inside a segment; remove the segment's ckpt/ "
                           "directory to rerun it from its start")


def plumed_spec(cfg, bundle, cv_path, grid: Grid, model_dir) -> PlumedInputSpec:
    """The ``plumed.dat`` settings for a CV file; writes the PYTORCH_MODEL model into ``model_dir``."""
    import math
    import torch
    from ..cvcheck import checked_cv
    ev = checked_cv(cv_path, bundle)
    module = torch.jit.load(str(cv_path), map_location="cpu")
    fmt = str(module.cvflow_format) if hasattr(module, "cvflow_format") else ""
    b = cfg.bias
    from ..sampler import coupling_kappa
    kappa = coupling_kappa(cfg, bundle, cv_path, grid, ev.particles)
    if fmt == "torsions/1":
        quads = module.quads.numpy()
        kind, particles = "torsions", np.unique(quads)
    else:
        quads, kind = None, "torch"
        particles = np.asarray(ev.particles, np.int64)
        write_plumed_cv(cv_path, particles, bundle.n_atoms, Path(model_dir) / "cv_plumed.pt")
    return PlumedInputSpec(cv_kind=kind, particles=particles, quads=quads, model_file="cv_plumed.pt",
                           dim=grid.dim, grid=grid, kappa=kappa, tau=b.tau, friction=b.friction,
                           temperature=cfg.md.temperature, fullsamples=b.fullsamples,
                           wall_kappa=b.wall_kappa if b.wall_kappa is not None else kappa,
                           output_freq=math.gcd(int(cfg.md.steps), int(cfg.md.checkpoint_interval)),
                           report_interval=cfg.md.report_interval, periodic_box=bundle.box is not None)


def export_plumed(cfg, bundle, cv_path, grid: Grid, out_dir) -> Path:
    """``plumed.dat`` and ``cv_plumed.pt`` side by side in ``out_dir``, with relative file names,
    for GROMACS or LAMMPS patched with a PLUMED that has the drr and pytorch modules."""
    from ..artifacts import write_text
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = plumed_spec(cfg, bundle, cv_path, grid, out_dir)
    write_text(out_dir / "plumed.dat", plumed_input(spec))
    return out_dir / "plumed.dat"


def make_plumed_bias(cfg, bundle, cv_path, grid: Grid, seed: int, out_dir) -> PlumedEABF:
    """The PLUMED DRR bias on the CV in ``cv_path``.

    DRR draws λ's noise from PLUMED's own generator, which has no seed keyword: runs with
    the same root seed agree in their MD noise, not in λ's.
    """
    from ..units import kT as _kT
    status = plumed_status(check_modules=False)
    if not status.usable:
        from ..config import ConfigError
        raise ConfigError(f"bias.engine: plumed is not usable: {status.reason}")
    out_dir = Path(out_dir)
    spec = plumed_spec(cfg, bundle, cv_path, grid, out_dir / "plumed")
    masses = np.array([bundle.system.getParticleMass(i).value_in_unit(mm.unit.dalton)
                       for i in range(bundle.n_atoms)])
    return PlumedEABF(spec, out_dir, masses, bundle.n_atoms, status.kernel, cfg.md.timestep,
                      _kT(cfg.md.temperature), bundle.box)
