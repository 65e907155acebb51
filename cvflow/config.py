"""Validated configuration: pydantic models (unknown keys are errors), YAML loading.

Every dimensional value is a string with units (see :mod:`cvflow.units`) and is stored
here as a float in cvflow's internal units (nm, ps, K, amu, kJ/mol). Input files are
resolved relative to the directory of the config file.
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, NonNegativeInt, PositiveInt,
                      ValidationError, field_validator, model_validator)

from .units import UnitError, parse_quantity


def one_line(text, limit: int = 160) -> str:
    """The first non-empty line of ``text`` (an exception: its message, or its type when the
    message is empty), cut at a word boundary to at most ``limit`` characters."""
    if isinstance(text, BaseException):
        text = str(text) or type(text).__name__
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    first = " ".join(lines[0].split()) if lines else "?"
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0] + " ..."


class ConfigError(Exception):
    """A problem with the user's input; printed as one or two lines, exit status 2."""


_INTERNAL_UNIT = {"temperature": "K", "time": "ps", "rate": "/ps", "length": "nm", "mass": "amu",
                  "energy": "kJ/mol", "force_constant": "kJ/mol/cv^2", "ext_mass": "kJ/mol*ps^2/cv^2"}


def _quantity(dimension: str, sign: str = "any"):
    """A quantity of ``dimension`` in cvflow's internal unit; ``sign``: "any", "positive"
    (> 0) or "nonnegative" (≥ 0), checked with a one-line message."""
    unit_text = _INTERNAL_UNIT[dimension]

    def convert(v):
        try:
            q = parse_quantity(v, dimension)
        except UnitError as e:
            raise ValueError(str(e)) from None
        if sign == "positive" and not q > 0:
            raise ValueError(f"must be positive, got {q:g} {unit_text}")
        if sign == "nonnegative" and not q >= 0:
            raise ValueError(f"must not be negative, got {q:g} {unit_text}")
        return q
    return Annotated[float, BeforeValidator(convert),
                     PlainSerializer(lambda v: f"{v!r} {unit_text}", when_used="json")]


Temperature = _quantity("temperature")
Time = _quantity("time")
Rate = _quantity("rate")
Length = _quantity("length")
Energy = _quantity("energy")
# what only makes sense above zero (a coupling, a mass, a time constant, a box size)
PositiveTime = _quantity("time", "positive")
PositiveLength = _quantity("length", "positive")
PositiveMass = _quantity("mass", "positive")
PositiveForceConstant = _quantity("force_constant", "positive")
PositiveExtMass = _quantity("ext_mass", "positive")
NonNegativeRate = _quantity("rate", "nonnegative")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SystemConfig(Strict):
    """A molecule from a PDB file, or one particle on an analytic 2-D potential."""
    pdb: Optional[Path] = None
    forcefield: list[str] = Field(default_factory=lambda: ["amber14-all.xml"])
    solvent: Literal["vacuum", "implicit", "explicit"] = "vacuum"
    implicit_model: str = "implicit/obc2.xml"
    water_model: str = "amber14/tip3p.xml"
    padding: PositiveLength = "1.0 nm"
    cutoff: PositiveLength = "1.0 nm"
    constraints: Literal["none", "HBonds", "AllBonds", "HAngles"] = "HBonds"
    potential: Optional[str] = None
    mass: Optional[PositiveMass] = None
    start: Optional[list[Length]] = None

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.pdb is None) == (self.potential is None):
            raise ValueError("give either 'pdb' (a molecule) or 'potential' (a toy), not both or neither")
        if self.potential is not None:
            if self.mass is None:
                raise ValueError("a toy potential needs 'mass', e.g. '1 amu'")
            if self.start is not None and len(self.start) != 2:
                raise ValueError("'start' takes two coordinates, e.g. ['-1 nm', '0 nm']")
        return self

    @property
    def is_toy(self) -> bool:
        return self.potential is not None


class RecoveryConfig(Strict):
    """What a biased MD stage does after a blow-up (non-finite or runaway positions, energy
    or CV, or an exception in a force): restart from its last checkpoint with the coupling
    κ (and λ's mass, so that τ stays) scaled by ``kappa_factor``, at most ``attempts``
    times per stage. ``attempts: 0`` stops at the first blow-up."""
    attempts: int = Field(3, ge=0)
    kappa_factor: float = Field(0.5, gt=0, lt=1)


class MDConfig(Strict):
    """Langevin dynamics settings."""
    temperature: Temperature = "300 K"
    timestep: Time = "2 fs"
    friction: Rate = "1 /ps"
    steps: PositiveInt = 100_000
    report_interval: PositiveInt = 500
    checkpoint_interval: PositiveInt = 10_000
    platform: Literal["auto", "Reference", "CPU", "CUDA", "OpenCL"] = "auto"
    threads: Optional[PositiveInt] = None
    # pin each MD segment's threads (CPU platform) to fixed cores: md.threads of them (1 when
    # unset; a walker: its share), from pin_offset on (walker w of the local backend: from
    # pin_offset + w × threads). Training and the bootstrap keep every core. On a VM whose
    # idle cores are slow to wake, this made a one-thread run 3-4x faster (README, "Threads
    # and pinning on OpenMM's CPU platform")
    pin: bool = False
    pin_offset: NonNegativeInt = 0
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    # the atoms each frame keeps (an MDTraj selection; "all": every atom). Default: every
    # atom in vacuum and implicit solvent; with explicit water, the solute (no water, no
    # ions) and the feature atoms. Training, reweighting and the report use the saved atoms.
    save_atoms: Optional[str] = None

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        if not 0 < v < 10_000:
            raise ValueError(f"must be above 0 K (and below 10,000 K), got {v:g} K")
        return v

    @field_validator("timestep")
    @classmethod
    def _timestep(cls, v):
        if not v > 0:
            raise ValueError(f"must be positive, got {v:g} ps")
        return v

    @field_validator("friction")
    @classmethod
    def _friction(cls, v):
        if v < 0:
            raise ValueError(f"must not be negative, got {v:g} /ps")
        return v

    @model_validator(mode="after")
    def _intervals(self):
        if self.report_interval > self.steps:
            raise ValueError(f"report_interval ({self.report_interval}) exceeds steps ({self.steps})")
        return self


def _angle_number(v):
    """A float, or a multiple of pi written as text: 'pi', '-pi', '2*pi', '0.5 pi'."""
    if isinstance(v, str):
        text = v.strip().lower().replace(" ", "")
        if text.endswith("pi"):
            factor = text[:-2].rstrip("*")
            try:
                f = {"": 1.0, "-": -1.0, "+": 1.0}.get(factor)
                return math.pi * (float(factor) if f is None else f)
            except ValueError:
                raise ValueError(f"cannot read {v!r} as a number or a multiple of pi") from None
    return v


GridNumber = Annotated[float, BeforeValidator(_angle_number)]


class GridDim(Strict):
    """One dimension of the eABF/CZAR grid, in the CV's own units.

    ``periodic: true`` makes the dimension wrap from ``max`` back to ``min`` (angles:
    ``min: -pi``, ``max: pi``); ξ − λ is taken as the nearest image, and the free energy
    is integrated around the circle.
    """
    min: GridNumber
    max: GridNumber
    bins: PositiveInt
    periodic: bool = False

    @model_validator(mode="after")
    def _order(self):
        if not self.min < self.max:
            raise ValueError(f"grid min ({self.min}) must be below max ({self.max})")
        if self.bins < 2:
            raise ValueError("grid needs at least 2 bins")
        return self

    @property
    def width(self) -> float:
        return (self.max - self.min) / self.bins


_FEATURE_ATOMS = {"torsion": 4, "sin_torsion": 4, "cos_torsion": 4, "distance": 2, "position": 1}


class CVFeature(Strict):
    """One input of a CV that takes features rather than positions (an mlcolvar model).

    ``atoms`` are 0-based indices into the system. ``torsion``: the dihedral angle
    (radians, MDTraj/PLUMED convention); ``sin_torsion``/``cos_torsion``: its sine or
    cosine; ``distance``: nm; ``position``: three features, x, y, z in nm.
    """
    kind: Literal["torsion", "sin_torsion", "cos_torsion", "distance", "position"]
    atoms: list[Annotated[int, Field(ge=0)]]

    @model_validator(mode="after")
    def _count(self):
        need = _FEATURE_ATOMS[self.kind]
        if len(self.atoms) != need:
            raise ValueError(f"a {self.kind} feature takes {need} atom(s), got {len(self.atoms)}")
        return self

    @property
    def width(self) -> int:
        return 3 if self.kind == "position" else 1


class BiasConfig(Strict):
    """Extended-system ABF on a TorchScript CV."""
    engine: Literal["auto", "native", "plumed", "none"] = "auto"
    cv: Optional[Path] = None
    cv_features: Optional[list[CVFeature]] = None
    kappa: Union[Literal["auto"], PositiveForceConstant] = "auto"
    tau: Optional[PositiveTime] = "0.5 ps"
    lambda_mass: Optional[PositiveExtMass] = None
    friction: NonNegativeRate = "1 /ps"
    grid: Optional[list[GridDim]] = None
    cv_grid: Optional[list[GridDim]] = None
    grid_margin: float = Field(0.05, ge=0, le=1)
    bins: PositiveInt = 60
    fullsamples: PositiveInt = 200
    wall_kappa: Optional[PositiveForceConstant] = None
    # native engine, 2-D grids: every this many steps the ABF force on λ becomes the
    # gradient of the Poisson-integrated running estimate (projected ABF: no curl, so λ is
    # not driven around the states' boundary); null: each bin's own running mean
    projection_interval: Optional[PositiveInt] = 2000
    # native engine: multiple time stepping. The bias (CV, λ step, statistics) is evaluated at
    # every stride-th MD step only, with stride times its force (an impulse, as Colvars'
    # timeStepFactor); λ steps by stride × md.timestep. md.report_interval and
    # projection_interval must be multiples of it. 1: every step
    stride: PositiveInt = 1
    # with kappa auto, keep ω Δt of the coupling at or below this at the steepest gradient of
    # the learned CV on its training frames (cvflow.cvstats); null: no bound
    max_omega_dt: Optional[Annotated[float, Field(gt=0, le=2)]] = 1.0
    # how a biased stage's frames are reweighted to the Boltzmann distribution (training
    # weights, states, production weights): ``extended`` by the extended variable λ,
    # ŵ ∝ e^{−βA(λ)}/ρ̃(λ); ``czar`` by the CZAR free energy along ξ (cvflow.dataset)
    reweighting: Literal["extended", "czar"] = "extended"

    @model_validator(mode="after")
    def _features_need_cv(self):
        if self.cv_features is not None and self.cv is None:
            raise ValueError("cv_features describes the inputs of bias.cv, but bias.cv is not given")
        if self.cv_features is not None and not self.cv_features:
            raise ValueError("cv_features is empty; list the model's input features in order")
        return self

    @field_validator("grid", "cv_grid")
    @classmethod
    def _grid_dims(cls, v):
        if v is not None and not 1 <= len(v) <= 2:
            raise ValueError("grid takes one or two dimensions")
        return v

    def kappa_for(self, widths, kT: float, stable: float | None = None) -> float:
        """κ in kJ/mol/cv². ``auto``: the thermal spread of ξ − λ is one bin, κ = kT / w², but
        never above ``stable``, the largest κ that the MD time step integrates safely on this
        CV (:func:`cvflow.cvstats.stable_kappa`, from the CV's gradients on its training
        frames; None when unknown, e.g. for a CV the user gives)."""
        if self.kappa != "auto":
            return float(self.kappa)
        k = float(kT / min(widths) ** 2)
        return min(k, float(stable)) if stable is not None else k

    def ext_mass(self, kappa: float) -> float:
        """Mass of the extended variable in kJ/mol ps² per CV unit² (from ``tau`` unless given)."""
        if self.lambda_mass is not None:
            return self.lambda_mass
        return kappa * (self.tau / (2 * math.pi)) ** 2


class FeaturesConfig(Strict):
    """What the autoencoder sees."""
    atoms: str = "backbone"
    align: bool = True
    reference: Optional[Path] = None


class SoftminConfig(Strict):
    """Annealing of the soft-min over decoders (``kind: multidecoder``): the temperature τ,
    in units of the loss (squared normalised features), falls geometrically from ``start``
    to ``end`` over ``anneal_epochs``."""
    start: float = Field(1.0, gt=0)
    end: float = Field(1e-3, gt=0)
    anneal_epochs: PositiveInt = 100

    @model_validator(mode="after")
    def _falls(self):
        if self.end > self.start:
            raise ValueError(f"softmin.end ({self.end:g}) is above softmin.start ({self.start:g}); the temperature "
                             "is annealed downwards")
        return self


class TransitionStatesConfig(Strict):
    """Transition-state frames added to the training loss with their own ``weight``:
    L = L(data) + weight · mean reconstruction error on those frames.

    ``source: file``: the frames of ``file`` (molecules: a trajectory MDTraj reads, with the
    system's atoms, e.g. DCD with the system's PDB as topology, or a PDB; toys: a ``.npy``
    or text file of x, y rows in nm). ``source: barrier``: each iteration takes its own
    frames whose previous CV lies near the top of a barrier of the free energy along it
    (a maximum that rises at least ``prominence_kT`` above the basins on both sides; frames
    within ``window_kT`` of its top), at most ``max_frames`` spread over the barriers."""
    source: Literal["file", "barrier"]
    file: Optional[Path] = None
    weight: float = Field(1.0, gt=0)
    window_kT: float = Field(1.0, gt=0)
    prominence_kT: float = Field(1.0, gt=0)
    max_frames: PositiveInt = 500

    @model_validator(mode="after")
    def _file(self):
        if self.source == "file" and self.file is None:
            raise ValueError("transition_states.source: file needs transition_states.file, the frames to add")
        if self.source == "barrier" and self.file is not None:
            raise ValueError("transition_states.file is given but source is barrier; set source: file to use it")
        return self


class VAEConfig(Strict):
    """``kind: vae``: the ELBO's KL term, KL(r(z|x) ‖ N(0, I)), has weight ``kl_weight``
    (1: the ELBO itself), reached linearly over the first ``kl_warmup`` epochs (a warm-up
    keeps the encoder from collapsing onto the prior before the decoder learns)."""
    kl_weight: float = Field(1.0, gt=0)
    kl_warmup: Annotated[int, Field(ge=0)] = 20


class ModelConfig(Strict):
    """The network that learns the CV (one kind of ``cvflow.models.MODELS``)."""
    kind: Literal["autoencoder", "multidecoder", "vae"] = "autoencoder"
    # vae: the probabilistic encoder/decoder of Schöberl et al.; the CV is the encoder mean
    vae: VAEConfig = Field(default_factory=VAEConfig)
    # multidecoder: K decoders share the encoder; each frame is reconstructed by its best one
    decoders: Annotated[int, Field(ge=1, le=16)] = 2
    softmin: SoftminConfig = Field(default_factory=SoftminConfig)
    transition_states: Optional[TransitionStatesConfig] = None
    hidden: list[PositiveInt] = Field(default_factory=lambda: [40])
    bottleneck: Literal[1, 2] = 2
    activation: Literal["tanh", "softplus", "relu", "elu"] = "tanh"
    # the CV layer: tanh keeps ξ in (−1, 1); identity leaves it unbounded (no saturation:
    # measured on alanine dipeptide, docs/measurements/ala2-paper-*.json). Default: tanh,
    # but identity for kind vae, whose CV is the mean of a Gaussian with prior N(0, 1)
    # (measured on the entropic switch: with tanh the loop did not converge in 8 iterations
    # and the CV was not monotonic in x; with identity it converged in 3, see the README)
    bottleneck_activation: Literal["tanh", "identity"] = "tanh"
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 256
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: PositiveInt = 20
    # independent starts per training (a warm start has one); the network with the lowest
    # validation loss is kept, and the bootstrap networks do the same
    restarts: PositiveInt = 1
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    reweight: bool = True
    # what iteration i trains on: its own frames (iteration, the paper's), or also those of
    # the earlier biased iterations (pooled; an unbiased iteration 0 never left its basin),
    # each iteration's weights scaled to a share proportional to its Kish effective sample
    # size; with warm_start, iteration i's network (and the bootstrap's) starts from
    # iteration i−1's, and a regscore reached right after a warm start from a network
    # trained on unbiased frames only (iteration 1's) is not a pass. Measured on alanine
    # dipeptide (README, "Current state: pooled, warm-started training"): successive CVs
    # retrained on the same frames scored regscores 0.03–0.99 from random starts,
    # 0.92–0.997 pooled and warm-started, and the loop stopped in 4 of 4 seeds; but fresh
    # networks do not find the warm-started CV.
    # Not the default: on the entropic switch the final CV was monotonic in x in 1 of 3
    # seeds (the default's: 3 of 3; docs/measurements/es-training-variants-cpu-vm.json)
    training_data: Literal["iteration", "pooled"] = "iteration"
    warm_start: bool = False
    # global: one scale for all inputs, so the loss is the paper's ‖x − x̂‖² on aligned
    # coordinates (measured on alanine dipeptide: R² onto (cos/sin φ, ψ) 0.83–0.89 over five
    # training seeds, against 0.47–0.91 with feature, which divides each coordinate by its
    # own standard deviation; docs/measurements/ala2-training-choices.json)
    scaling: Literal["feature", "global"] = "global"
    threads: Optional[PositiveInt] = None
    # where the networks train: auto takes CUDA when torch sees a GPU; the exported CV and
    # decoders are CPU TorchScript either way. Numbers are reproducible for a given device.
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _vae_cv_layer(self):
        if self.kind == "vae" and "bottleneck_activation" not in self.model_fields_set:
            object.__setattr__(self, "bottleneck_activation", "identity")
        return self


class BootstrapConfig(Strict):
    repeats: int = Field(4, ge=2)
    fraction: float = Field(0.8, gt=0, le=1)
    quantile: float = Field(0.05, ge=0, le=1)
    # processes that train the bootstrap networks side by side. auto: one per core (at most
    # `repeats`) when the data are large enough to pay for starting them (≥ 10⁶ feature
    # values), else 1. Small networks do not gain from more torch threads; they do from this.
    workers: Union[Literal["auto"], PositiveInt] = "auto"
    # the threshold is never below this: with a few networks, the low quantile is the worst
    # pair, and one network that lands in another minimum would let an R² of 0.03 pass.
    min_threshold: float = Field(0.5, ge=0, le=1)


class ConvergenceConfig(Strict):
    max_iterations: PositiveInt = 8
    # passes (regscore ≥ an unfloored threshold) in a row needed to stop
    consecutive: PositiveInt = 1
    # after those passes, one more iteration (biased on the CV that passed) must confirm the
    # stop: its bootstrap networks agree (threshold not floored) and its regscore against
    # the CV that passed reaches bootstrap.min_threshold. Not the threshold itself: near
    # convergence the regscore falls within 0.01 of it either way, so a second pass is a
    # coin flip (README, "Two passes in a row"); a CV that the next frames overturn is not.
    # Measured on alanine dipeptide: seed 9 stopped on a CV that missed C7ax, and the next
    # iteration's networks disagreed (quantile 0.38, regscore 0.41; README, "Confirming a stop")
    confirm: bool = False
    # how successive CVs (and the bootstrap networks) are compared: the paper's linear
    # regression score, or a k-nearest-neighbour one that reads a nonlinear re-embedding of
    # the same coordinates (rotated, folded, stretched: what a fresh network start gives) as
    # the same CV (cvflow.convergence.knn_regscores)
    score: Literal["linear", "knn"] = "linear"
    threshold: Union[Literal["auto"], Annotated[float, Field(gt=0, le=1)]] = "auto"
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    production_steps: PositiveInt = 200_000
    # after the production's eABF, this many more steps with its bias frozen (a static
    # B(λ)); the production's frames, weights and states then come from that stage, whose
    # weights e^{β[B(λ) + W(λ)]} are exact whatever the CV resolves (native engine, one
    # walker). 0: production is the eABF stage alone.
    production_frozen_steps: NonNegativeInt = 0
    # every this many steps of the frozen stage (a multiple of md.report_interval), its bias
    # is frozen again from the statistics so far, its own included: where the production's
    # eABF had sampled a bin too briefly for its mean force (λ moving on before ξ followed),
    # the first B can hold a well that traps λ, and the frozen stage's own sampling of it
    # corrects that. The frames of all the parts are weighted together by MBAR
    # (cvflow.dataset.log_weights_frozen); 0: one freeze
    production_frozen_refreeze: NonNegativeInt = 0
    # a frozen bias flattens λ's free energy up to this many kT above its lowest bin, and
    # no further: regions higher than that carry under e^-20 of the weight, and a bias that
    # fills them in full can hold the system there for good (measured on alanine dipeptide:
    # seed 9's B spanned 166 kJ/mol and held λ past the CV's tanh edge for 105 ns; README,
    # "A ceiling on the frozen bias"). A freeze raises it to 1 kT over the level at which
    # the basins holding 99.9 % of λ's weight join, should that be higher, so it never
    # leaves a barrier between them. The weights stay exact. null: flatten all of it
    production_frozen_fill_kT: Optional[Annotated[float, Field(gt=0)]] = 20.0
    # with states: the frozen stage goes on past production_frozen_steps until every ΔF
    # between the reference state and another rests on at least this many transitions
    # (cvflow.states.state_transitions), as far as the rate seen so far says that
    # production_frozen_max_steps allows (cvflow.states.frozen_extension). 0: it runs
    # production_frozen_steps only. Below 30 transitions the ΔF's block error is not to be
    # trusted (README, "Transitions between states"). With enough of them, it still goes on,
    # doubling, while a ΔF drifts (its halves over DRIFT_Z standard errors apart;
    # cvflow.states.drift_extension)
    production_frozen_min_transitions: NonNegativeInt = 0
    # the frozen stage's length at most, extensions included (null: 4 × production_frozen_steps)
    production_frozen_max_steps: Optional[PositiveInt] = None
    min_ess_fraction: float = Field(0.05, ge=0, le=1)

    def frozen_max_steps(self) -> int:
        """The frozen stage's length at most, extensions included."""
        return self.production_frozen_max_steps or 4 * self.production_frozen_steps


class ClusterConfig(Strict):
    """A dask-jobqueue cluster (``execution.backend: slurm`` or ``pbs``): one walker per job."""
    queue: Optional[str] = None
    account: Optional[str] = None
    cores: PositiveInt = 4
    memory: str = "16GB"
    gpus: int = Field(0, ge=0)
    walltime: str = "04:00:00"
    job_extra_directives: list[str] = Field(default_factory=list)
    prologue: list[str] = Field(default_factory=list)
    log_directory: Optional[str] = None


class ExecutionConfig(Strict):
    """Where MD runs: ``walkers`` eABF walkers per stage, on Dask."""
    walkers: PositiveInt = 1
    backend: Literal["local", "dask", "slurm", "pbs"] = "local"
    scheduler: Optional[str] = None
    workers: Optional[PositiveInt] = None
    min_walkers: Optional[PositiveInt] = None
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _consistent(self):
        if self.backend == "dask" and not self.scheduler:
            raise ValueError("backend 'dask' needs scheduler: the address of a running Dask scheduler "
                             "(tcp://host:8786)")
        if self.min_walkers is not None and self.min_walkers > self.walkers:
            raise ValueError(f"min_walkers ({self.min_walkers}) is more than walkers ({self.walkers})")
        return self


_TORSIONS = ("phi", "psi", "chi1", "chi2", "omega")


class DistanceBox(Strict):
    """A distance between the centres of two MDTraj selections, inside ``range``."""
    between: list[str]
    range: list[Length]

    @model_validator(mode="after")
    def _two(self):
        if len(self.between) != 2:
            raise ValueError("distance.between takes two MDTraj selections")
        if len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise ValueError("distance.range takes [low, high] with low < high, e.g. ['0 nm', '0.5 nm']")
        return self


class RMSDBox(Strict):
    """RMSD (after optimal superposition of ``atoms``) to a reference structure, inside ``range``."""
    reference: Path
    atoms: str = "backbone"
    range: list[Length]

    @model_validator(mode="after")
    def _range(self):
        if len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise ValueError("rmsd.range takes [low, high] with low < high, e.g. ['0 nm', '0.15 nm']")
        return self


class StateDef(Strict):
    """A named state: a box in observables that MDTraj computes. Torsions are in degrees,
    ``[low, high]``, of residue ``residue`` (0-based; default: the first residue that has
    that torsion); a box with low > high wraps through ±180 (e.g. ``psi: [120, -120]``).
    A frame is in the state when every observable given is inside its box."""
    residue: Optional[Annotated[int, Field(ge=0)]] = None
    phi: Optional[list[float]] = None
    psi: Optional[list[float]] = None
    chi1: Optional[list[float]] = None
    chi2: Optional[list[float]] = None
    omega: Optional[list[float]] = None
    distance: Optional[DistanceBox] = None
    rmsd: Optional[RMSDBox] = None

    @model_validator(mode="after")
    def _boxes(self):
        given = [k for k in _TORSIONS if getattr(self, k) is not None]
        for k in given:
            box = getattr(self, k)
            if len(box) != 2 or not all(-180.0 <= v <= 180.0 for v in box) or box[0] == box[1]:
                raise ValueError(f"{k} takes [low, high] in degrees within [-180, 180], e.g. [-180, 0]")
        if not given and self.distance is None and self.rmsd is None:
            raise ValueError("a state needs at least one box: phi, psi, chi1, chi2, omega, distance or rmsd")
        return self

    def torsion_boxes(self) -> dict:
        return {k: getattr(self, k) for k in _TORSIONS if getattr(self, k) is not None}


class ToyBox(Strict):
    """A named state of a toy for ``cvflow generate``: x and/or y inside [low, high] (nm;
    ``.inf`` for an open side, e.g. ``x: [-.inf, 0]``)."""
    x: Optional[list[float]] = None
    y: Optional[list[float]] = None

    @model_validator(mode="after")
    def _boxes(self):
        given = [(k, getattr(self, k)) for k in ("x", "y") if getattr(self, k) is not None]
        if not given:
            raise ValueError("a toy state needs a box in x or y, e.g. x: [-.inf, 0]")
        for k, box in given:
            if len(box) != 2 or not box[0] < box[1]:
                raise ValueError(f"{k} takes [low, high] in nm with low < high, e.g. [-.inf, 0]")
        return self


class GeneratorMD(Strict):
    """A short unbiased MD run whose frames train the generator by maximum likelihood:
    ``steps`` steps from ``start`` (toys: [x, y]; molecules: the system's structure when
    omitted), one frame every ``md.report_interval`` steps."""
    steps: PositiveInt
    start: Optional[list[Length]] = None

    @field_validator("start")
    @classmethod
    def _two(cls, v):
        if v is not None and len(v) != 2:
            raise ValueError("start takes the toy's [x, y], e.g. ['-1.8 nm', '0 nm']")
        return v


class GeneratorConfig(Strict):
    """A Boltzmann generator (``cvflow generate``): a normalizing flow (zuko's neural spline
    flows) trained by maximum likelihood (ML) on frames with weights and by the reverse
    Kullback-Leibler divergence (KL) to exp(−βU), then sampled and reweighted.

    The loss at step t is ``ml_weight`` · ML + k(t) · KL, where the KL weight k(t) rises
    linearly from 0 to ``kl_weight`` over ``kl_ramp`` steps after ``kl_start`` steps of ML
    alone; with ``temperature_start`` the KL's temperature falls from it to md.temperature
    over the same ramp (annealing). Energies above ``energy_cut`` (in kT above the lowest
    of the training frames) grow only logarithmically in the KL, so that one clash does not
    dominate a batch."""
    transforms: PositiveInt = 4
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 64])
    bins: Annotated[int, Field(ge=2, le=64)] = 8
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 256
    learning_rate: float = Field(1e-3, gt=0)
    # cosine: the learning rate falls to 0 over the steps (after the KL ramp); constant: it stays
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    ml_weight: float = Field(1.0, ge=0)
    kl_weight: float = Field(1.0, ge=0)
    kl_start: Annotated[int, Field(ge=0)] = 100
    kl_ramp: Annotated[int, Field(ge=0)] = 500
    temperature_start: Optional[Temperature] = None
    energy_cut: float = Field(1000.0, gt=0)
    samples: PositiveInt = 100_000
    md: list[GeneratorMD] = Field(default_factory=list)
    data: Optional[Path] = None
    # --from RUN_DIR: which of the run's frames (production; every stage: the iterations
    # and production; or initial: iteration 0 alone, the stage biased on bias.cv) and with
    # which weights (the run's reweighting factors, each stage normalised to its frame
    # count; or uniform: the biased sampling itself as the target of ML, a wider proposal
    # that the importance weights correct)
    frames: Literal["production", "all", "initial"] = "production"
    frame_weights: Literal["reweighted", "uniform"] = "reweighted"
    states: Optional[dict[str, ToyBox]] = None
    bootstrap: Annotated[int, Field(ge=0)] = 200
    checkpoint_every: PositiveInt = 200
    platform: Literal["Reference", "CPU", "CUDA", "OpenCL"] = "Reference"

    @model_validator(mode="after")
    def _losses(self):
        if self.ml_weight == 0 and self.kl_weight == 0:
            raise ValueError("ml_weight and kl_weight are both 0: nothing would train the flow")
        if self.temperature_start is not None and self.temperature_start <= 0:
            raise ValueError("temperature_start must be positive")
        return self


class TemperingConfig(Strict):
    """Reverse-KL training (``cvflow cg --no-data``) at an inverse temperature β_s that
    rises from ``beta_start`` · β towards β (Schöberl et al. 2020): after ``steps_per_level``
    optimiser steps at β_s, β_s is raised as far as the current model allows, to the largest
    β' whose KL estimate KL(q ‖ q·e^{−t}/c), computed on ``estimate_samples`` of the model's
    samples, stays under ``kl_threshold`` nats; t is the change of the regularised energy that
    training sees (= (β'−β_s)U below ``cg.energy_cut``). ``final_steps`` more steps train at β.
    ``initial_steps`` (default: ``steps_per_level``) is the length of the first level, at
    ``beta_start``, where the target is nearly flat: a longer one lets the model spread over
    it before β_s starts to rise."""
    beta_start: float = Field(1e-10, gt=0, le=1)
    kl_threshold: float = Field(0.3, gt=0)
    steps_per_level: PositiveInt = 100
    initial_steps: PositiveInt | None = None
    final_steps: Annotated[int, Field(ge=0)] = 2000
    estimate_samples: Annotated[int, Field(ge=100)] = 2000
    max_levels: PositiveInt = 1000


class CGConfig(Strict):
    """Probabilistic coarse-graining (``cvflow cg``): the VAE of :mod:`cvflow.models.vae`
    (latent z ~ N(0, I), decoder q(x|z), encoder r(z|x) whose mean is the CV), trained on a
    run's frames and weights (``--from``: the ELBO with an ARD prior on the decoder's weights
    and a Laplace approximation of the posterior of its output layer) or on the energy alone
    (``--no-data``: the reverse KL with tempering)."""
    latent: Literal[1, 2, 3] = 2
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "softplus", "relu", "elu"] = "tanh"
    steps: PositiveInt = 3000              # optimiser steps on the data (--from)
    batch_size: PositiveInt = 256          # frames per step, or the model's samples per step (--no-data)
    learning_rate: float = Field(1e-3, gt=0)
    kl_warmup: Annotated[int, Field(ge=0)] = 500   # steps over which the ELBO's KL term reaches weight 1
    # cosine: the learning rate falls on a cosine to 0 after the KL warm-up (--from) or over
    # the final steps at β (--no-data); constant: it stays
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    # --from: which of the run's frames and weights (as for the generator; initial: iteration
    # 0 alone, biased on bias.cv), and how many of them, evenly spaced (null: all): the
    # predictions' credible intervals widen when they are few
    frames: Literal["production", "all", "initial"] = "production"
    # biased: every frame counts once in the ELBO, so the model learns the biased ensemble,
    # and its samples are resampled by the run's factor as a function of each stage's CV
    # (cvflow.stage_weights), oversample times as many drawn as kept; reweighted: the ELBO
    # weighs each frame by its reweighting factor; uniform: every frame alike, no factor
    # (unbiased frames). Measured on alanine dipeptide: README
    frame_weights: Literal["biased", "reweighted", "uniform"] = "biased"
    oversample: PositiveInt = 10
    # biased: the frames' likelihood weights are the run's factor to this power (0: every
    # frame once; towards 1, the reweighted likelihood), the samples' the rest of it
    weight_exponent: float = Field(0.0, ge=0.0, lt=1.0)
    n_frames: Optional[PositiveInt] = None
    # which evenly spaced frames: shifted by this fraction of their spacing (0: the first
    # and the last frame included); other offsets give other, disjoint subsets (coverage checks)
    frame_offset: float = Field(0.0, ge=0.0, lt=1.0)
    # the Laplace posterior counts the frames as their Kish ESS, independent (the papers'
    # treatment); with correlated_frames, divided by the statistical inefficiency of their
    # latent series: MD frames close in time are worth less (measured: the README)
    correlated_frames: bool = False
    ard: bool = True                       # an ARD (sparsity) prior on the decoder's weights
    ard_every: PositiveInt = 250           # steps between updates of its precisions
    # the rate b₀ of the precisions' Gamma hyperprior: 10⁻⁶ (nearly flat in log α, the
    # papers') prunes any weight the data do not hold up; larger, a weight under about
    # √(2 b₀) is shrunk as by a Gaussian of precision ≤ (a₀ + ½)/b₀ instead (measured: README)
    ard_b0: float = Field(1e-6, gt=0.0)
    posterior_draws: Annotated[int, Field(ge=2)] = 50   # decoder draws from the Laplace posterior
    # map: the decoder's noise σ(z) at its MAP in the Laplace posterior (the papers'); marginal:
    # σ known up to one common scale that the frames' effective count ν determines, so each
    # draw is a Student-t with ν degrees of freedom (wider with few frames; measured: README)
    posterior_noise: Literal["map", "marginal"] = "map"
    # --from: this many VAEs, each from its own seed on a Bayesian-bootstrap reweighting of the
    # frames (Rubin 1981: each frame's weight times an Exp(1) draw); the posterior is the equal
    # mixture of their Laplace posteriors, so the intervals also hold what the frames' finite
    # number and the training's seed leave open about how the states share the weight, which
    # one network's output layer cannot (1: one network on the frames, the papers'; measured: README)
    ensemble: Annotated[int, Field(ge=1, le=32)] = 1
    tempering: TemperingConfig = Field(default_factory=TemperingConfig)
    # --no-data: the entropy term E_q[log q(x)]. encoder_bound: the paper's upper bound
    # E_q[log q(x, z) − log r(z|x)]; importance_weighted: a tighter upper bound with
    # iw_samples draws of r besides the generating z (Sobolev & Vetrov 2019); quadrature:
    # log q(x) itself, by quadrature over a 1-D latent (then the objective is the reverse KL
    # exactly). A bound's gap differs between modes and shifts their weights (measured on
    # the double well, see the README)
    entropy: Literal["encoder_bound", "importance_weighted", "quadrature"] = "importance_weighted"
    iw_samples: Annotated[int, Field(ge=2)] = 32
    encoder_prior_scale: float = Field(1.5, ge=1.0)  # importance_weighted: the encoder's training latents
    # --no-data: p(z) = N(0, I) (1, the papers'), or a mixture of this many unit Gaussians
    # prior_separation apart along z₁, with learned weights: a rare mode gets its own
    # component instead of the prior's tail (cvflow.models.vae.MixturePrior; measured: README)
    prior_components: Annotated[int, Field(ge=1, le=8)] = 1
    prior_separation: float = Field(6.0, gt=0)
    prior_lr_scale: float = Field(20.0, gt=0)   # the mixture weights' learning rate, in units of learning_rate
    samples: PositiveInt = 20_000          # generated configurations (pooled over the draws)
    states: Optional[dict[str, ToyBox]] = None
    energy_cut: float = Field(1000.0, gt=0)  # β_s U/kT above the structure's: log-capped above
    # the decoder's largest σ in a torsion (radians; 2.5 is near uniform): smaller, and only
    # z can spread a torsion over several wells, so the latent must tell them apart
    torsion_sigma_max: float = Field(2.5, gt=0, le=2.5)
    checkpoint_every: PositiveInt = 200
    platform: Literal["Reference", "CPU", "CUDA", "OpenCL"] = "Reference"

    @model_validator(mode="after")
    def _quadrature_needs_one_latent(self):
        if self.entropy == "quadrature" and self.latent != 1:
            raise ValueError(f"entropy: quadrature integrates over a 1-D latent; latent is {self.latent} "
                             "(use importance_weighted)")
        return self


class Config(Strict):
    """A whole cvflow run."""
    seed: int = Field(2024, ge=0)
    system: SystemConfig
    md: MDConfig = Field(default_factory=MDConfig)
    bias: BiasConfig = Field(default_factory=BiasConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    convergence: ConvergenceConfig = Field(default_factory=ConvergenceConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    states: Optional[dict[str, StateDef]] = None
    generator: Optional[GeneratorConfig] = None
    cg: Optional[CGConfig] = None
    output: Optional[Path] = None

    @model_validator(mode="after")
    def _grid_fits_the_learned_cv(self):
        if self.execution.walkers > 1 and self.bias.engine == "plumed":
            raise ValueError("execution.walkers > 1 needs bias.engine: native (DRR's CZAR output holds "
                             "gradients, which cannot be merged exactly; cvflow's counts and sums can)")
        subset = self.md.save_atoms not in (None, "all") or (self.md.save_atoms is None
                                                              and self.system.solvent == "explicit")
        if self.execution.walkers > 1 and subset and not self.system.is_toy:
            raise ValueError("md.save_atoms: walkers start from saved frames spread over the CV, which need "
                             "every atom; with execution.walkers > 1 set md.save_atoms: all")
        b = self.bias
        if not self.system.is_toy and b.stride * self.md.timestep > MAX_BIAS_IMPULSE_INTERVAL + 1e-12:
            limit = (f"molecules take at most {MAX_BIAS_IMPULSE_INTERVAL * 1000:g} fs (alanine dipeptide heats "
                     "up beyond it and blows up at 20 fs)")
            if b.stride == 1:
                raise ValueError(f"md.timestep: {self.md.timestep * 1000:g} fs is too long; the bias acts at every "
                                 f"step, and {limit}")
            raise ValueError(f"bias.stride {b.stride} × md.timestep {self.md.timestep * 1000:g} fs puts "
                             f"{b.stride * self.md.timestep * 1000:g} fs between the bias's impulses; {limit}")
        if b.stride > 1:
            if b.engine == "plumed":
                raise ValueError(f"bias.stride: {b.stride} needs bias.engine: native (cvflow does not set "
                                 "PLUMED's own stride)")
            for name, n in (("md.report_interval", self.md.report_interval),
                            ("bias.projection_interval", b.projection_interval)):
                if n and n % b.stride:
                    raise ValueError(f"{name} ({n}) is not a multiple of bias.stride ({b.stride}): the bias "
                                     f"records ξ and λ only at the steps where it is evaluated")
        if self.convergence.production_frozen_steps:
            if self.execution.walkers > 1:
                raise ValueError("convergence.production_frozen_steps needs execution.walkers: 1 (the frozen "
                                 "stage goes on from the production's own bias)")
            if self.bias.engine == "plumed":
                raise ValueError("convergence.production_frozen_steps needs bias.engine: native (DRR's bias "
                                 "cannot be frozen from cvflow)")
        c = self.convergence
        for key in ("production_frozen_refreeze", "production_frozen_min_transitions"):
            if getattr(c, key) and not c.production_frozen_steps:
                raise ValueError(f"convergence.{key} acts on the frozen stage; set convergence.production_frozen_steps "
                                 "too")
        if c.production_frozen_refreeze % self.md.report_interval:
            raise ValueError(f"convergence.production_frozen_refreeze ({c.production_frozen_refreeze:,}) is not a "
                             f"multiple of md.report_interval ({self.md.report_interval:,})")
        if c.production_frozen_min_transitions:
            if not self.states or len(self.states) < 2:
                raise ValueError("convergence.production_frozen_min_transitions counts transitions between states; "
                                 "give at least two under states:")
        if c.production_frozen_max_steps is not None and c.production_frozen_max_steps < c.production_frozen_steps:
            raise ValueError(f"convergence.production_frozen_max_steps ({c.production_frozen_max_steps:,}) is less "
                             f"than convergence.production_frozen_steps ({c.production_frozen_steps:,})")
        if self.states is not None and self.system.is_toy:
            raise ValueError("states are boxes in molecular observables (phi, psi, distance, rmsd); "
                             "a toy system has none (for cvflow generate, give generator.states in x and y)")
        g = self.generator
        if g is not None and g.states is not None and not self.system.is_toy:
            raise ValueError("generator.states are boxes in a toy's x and y; a molecule's states are the "
                             "top-level states: (phi, psi, distance, rmsd)")
        if g is not None and any(m.start is not None for m in g.md) and not self.system.is_toy:
            raise ValueError("generator.md[].start is a toy's [x, y]; a molecule's runs start from its structure")
        # molecules: beyond 5 fs even hydrogen-mass-repartitioned systems blow up
        if not self.system.is_toy and self.md.timestep > MAX_MOLECULAR_TIMESTEP:
            raise ValueError(f"md.timestep is {self.md.timestep * 1000:g} fs; molecular dynamics needs at most "
                             f"{MAX_MOLECULAR_TIMESTEP * 1000:g} fs (2 fs with constraints: HBonds is usual)")
        cells = grid_cells(self)
        if cells > MAX_GRID_CELLS:
            raise ValueError(f"the eABF grid would have {cells:,} cells ({grid_cells_text(self)}); cvflow keeps "
                             f"several arrays per cell, so at most {MAX_GRID_CELLS:,} cells are allowed "
                             f"(e.g. 1000 bins in 1-D, 1000 x 1000 in 2-D)")
        ts = self.model.transition_states
        if ts is not None and ts.source == "barrier" and self.model.bottleneck != 1:
            raise ValueError("model.transition_states.source: barrier finds barriers of a 1-D free energy; "
                             "with model.bottleneck: 2 give the frames as source: file")
        return self


def check_loop_config(cfg: "Config") -> None:
    """What only the learning loop needs (``run``, ``validate``), not ``cvflow sample``: a
    ``bias.grid`` is the learned CV's grid, so it has ``model.bottleneck`` dimensions; and
    ``model.device: cuda`` needs a GPU that torch sees."""
    if cfg.model.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("model.device: cuda, but torch sees no CUDA device here "
                              f"(torch {torch.__version__}); use auto or cpu")
    g = cfg.bias.grid
    if g is not None and len(g) != cfg.model.bottleneck:
        raise ConfigError(f"bias.grid has {len(g)} dimension(s) but the learned CV has model.bottleneck = "
                          f"{cfg.model.bottleneck}; give the initial CV's grid as bias.cv_grid")


MAX_MOLECULAR_TIMESTEP = 0.005  # ps
# bias.stride × md.timestep: on alanine dipeptide with eABF on (φ, ψ), 10 fs kept 300 K, 12 fs
# heated it by about 12 K, 16 fs by 200 K, and 20 fs blew it up (scripts/bias_stride_check.py)
MAX_BIAS_IMPULSE_INTERVAL = 0.010  # ps
MAX_GRID_CELLS = 1_000_000


def cells_of(dims) -> int:
    """The number of cells of a grid given as GridDims."""
    return math.prod(d.bins for d in dims) if dims else 1


def grid_cells(cfg: "Config") -> int:
    """The most cells any eABF grid of this run has: the given grids, and the grid of
    ``bias.bins`` per dimension of the learned CV."""
    b = cfg.bias
    return max(cells_of(b.grid) if b.grid else b.bins ** cfg.model.bottleneck,
               cells_of(b.cv_grid) if b.cv_grid else 0)


def grid_cells_text(cfg: "Config") -> str:
    b = cfg.bias
    if b.grid:
        return "bias.grid: " + " x ".join(str(d.bins) for d in b.grid)
    if b.cv_grid and cells_of(b.cv_grid) >= b.bins ** cfg.model.bottleneck:
        return "bias.cv_grid: " + " x ".join(str(d.bins) for d in b.cv_grid)
    return f"bias.bins: {b.bins} per dimension of a {cfg.model.bottleneck}-D CV"


# ---------------------------------------------------------------------------------------
# loading and error messages

def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the key at ``loc`` (for suggestions)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        ann = cur.model_fields[part].annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    cur = inner
                    break
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


# the names pydantic gives the members of a union in an error's location (literal['auto'],
# constrained-float, function-before[convert(), float], ...): not config keys
_UNION_MEMBER = re.compile(r"^(literal\[.*\]|constrained-\w+|function-(before|after|wrap|plain)\[.*\]|int|float|str|bool)$")


_KEY_FIRST = re.compile(r"^[a-z_]+(\.[a-z_0-9]+)+: ")


def _config_errors(err: ValidationError) -> list[dict]:
    """pydantic's errors with the union members left out of their locations, and one error
    per key of a union: a value that matches none of ``'auto' | a number`` gets the number's
    message with "(or 'auto')", not one line per member."""
    out: dict[tuple, dict] = {}
    literals: dict[tuple, str] = {}
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p)))
        if len(loc) < len(e["loc"]) and e["type"] == "literal_error":
            literals[loc] = str((e.get("ctx") or {}).get("expected", ""))
            continue
        out.setdefault(loc, {**e, "loc": loc})
    for loc, expected in literals.items():
        if loc in out:
            out[loc]["msg"] = f"{out[loc]['msg']} (or {expected})"
        else:
            out[loc] = {"type": "literal_error", "loc": loc, "msg": f"Input should be {expected}"}
    return list(out.values())


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """Turn a pydantic error into short lines that name the key."""
    lines = []
    errors = _config_errors(err)
    for e in errors[:3]:
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(Config, loc)
            hint = ""
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1)
                if close:
                    hint = f"; did you mean '{close[0]}'?"
            lines.append(f"{source}: unknown key '{key}'{hint}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{key}'")
        else:
            msg = e["msg"]
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            if not loc and _KEY_FIRST.match(msg):  # a check across sections that names its key itself
                lines.append(f"{source}: {msg}")
            else:
                lines.append(f"{source}: {key}: {msg}")
    if len(errors) > 3:
        lines.append(f"{source}: ... and {len(errors) - 3} more problems")
    return "\n".join(lines)


def _input_slots(cfg: Config) -> list[tuple[str, object, str]]:
    """(key, section, attribute) of every input file a config can name."""
    slots = [("system.pdb", cfg.system, "pdb"), ("bias.cv", cfg.bias, "cv"),
             ("features.reference", cfg.features, "reference")]
    if cfg.model.transition_states is not None:
        slots.append(("model.transition_states.file", cfg.model.transition_states, "file"))
    if cfg.generator is not None:
        slots.append(("generator.data", cfg.generator, "data"))
    for name, st in (cfg.states or {}).items():
        if st.rmsd is not None:
            slots.append((f"states.{name}.rmsd.reference", st.rmsd, "reference"))
    return slots


def input_files(cfg: Config) -> list[tuple[str, Path]]:
    """(key, path) of the input files the config names."""
    return [(key, Path(getattr(sec, attr))) for key, sec, attr in _input_slots(cfg)
            if getattr(sec, attr) is not None]


def _map_input_files(cfg: Config, fn) -> Config:
    for key, sec, attr in _input_slots(cfg):
        if getattr(sec, attr) is not None:
            setattr(sec, attr, fn(key, Path(getattr(sec, attr))))
    return cfg


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def res(_key, p):
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()
    return _map_input_files(cfg, res)


KEPT_INPUTS = "inputs"


def kept_input(run_dir: Path, key: str, path: Path) -> Path:
    """Where a run directory keeps its copy of the input file ``key`` (``inputs/KEY/NAME``)."""
    return Path(run_dir) / KEPT_INPUTS / key / Path(path).name


def with_kept_inputs(cfg: Config, run_dir: Path) -> Config:
    """``cfg`` (a run's recorded config) with each input file that is no longer where the
    run found it replaced by the run directory's copy, where there is one: a run moved to
    another machine, or whose PDB was moved, still reports and resumes."""
    def kept(key, p):
        copy = kept_input(Path(run_dir).resolve(), key, p)
        return copy if not p.is_file() and copy.is_file() else p
    return _map_input_files(cfg, kept)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader for which a key given twice in one mapping is an error (PyYAML keeps
    the last silently: a second ``md:`` section would reset the first to defaults)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); give each key once", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_config(path: str | Path, check_files: bool = True) -> Config:
    """Read and validate a YAML config; raise :class:`ConfigError` with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or one_line(e)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (system:, md:, bias:, ...)")
    record = is_resolved_record(data)
    if record:
        # a run's config.resolved.yaml: the config it ran (every default filled in, input
        # paths absolute) beside the seeds, versions and threads; run again from the config
        data = data["config"]
    cfg = config_from_dict(data, source=str(path))
    cfg = _resolve_paths(cfg, path.parent.resolve())
    if record:  # inputs moved since: the run directory's copies
        cfg = with_kept_inputs(cfg, path.parent)
    if check_files:
        check_input_files(cfg)
    return cfg


def is_resolved_record(data: dict) -> bool:
    """Whether a YAML mapping is a run directory's ``config.resolved.yaml`` (``config:`` and
    ``versions:`` at the top, where a config has its sections) rather than a config."""
    return isinstance(data.get("config"), dict) and "versions" in data and "system" not in data


def config_from_dict(data: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def check_input_files(cfg: Config) -> None:
    """Every file the config names must exist."""
    for key, p in input_files(cfg):
        if not p.is_file():
            raise ConfigError(f"{key}: file not found: {p}")


def dump_config(cfg: Config) -> dict:
    """The config as plain YAML-able data (paths as strings, quantities in internal units)."""
    return cfg.model_dump(mode="json")


def recorded_config(data: dict) -> dict:
    """A config that an earlier run recorded (``config.resolved.yaml``), read through today's
    schema: keys added since then take their defaults, which keep the old behaviour, so that
    ``--resume`` after an upgrade does not count them as changes. A record that today's schema
    refuses (a key since removed) is returned as it is, and its differences show."""
    try:
        return dump_config(Config.model_validate(data))
    except ValidationError:
        return data
