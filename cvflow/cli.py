"""Command-line interface: parse, call the workflow, report. No science here.

Errors in the user's input exit with status 2 and one or two lines, no traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"cvflow: error: {self.format_message()}", err=True)


class RunError(click.ClickException):
    exit_code = 1

    def show(self, file=None):
        click.echo(f"cvflow: {self.format_message()}", err=True)


def _guard(fn):
    """Turn exceptions into one-line messages: the user's input (exit 2), known run-time
    failures (exit 1), an interrupt (130). Anything else is cvflow's fault: one line that
    names it, with the traceback written to a file (shown with -vv)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .config import ConfigError, one_line
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            raise UserError(str(e)) from None
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("cvflow: interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            raise RunError("out of memory; use a smaller grid (bias.bins), fewer frames "
                           "(md.report_interval) or a smaller model") from None
        except OSError as e:  # a file that cannot be written or read: the user's environment
            where = e.filename or ""
            raise UserError(f"{where}{': ' if where else ''}{e.strerror or one_line(e)}") from None
        except Exception as e:  # known run-time failures: blow-ups, NaN losses, stop requests
            from .bias.native import BlowUpError
            from .sampler import StopRequested
            from .train import TrainingError
            from .walkers import WalkersFailed
            if isinstance(e, StopRequested):
                click.echo(f"cvflow: {e}; resume with --resume", err=True)
                sys.exit(143)
            if isinstance(e, (BlowUpError, TrainingError, WalkersFailed)):
                raise RunError(str(e)) from None
            if (kwargs.get("verbose") or 0) + _root_verbosity()[0] >= 2:
                raise
            raise RunError(f"internal error: {type(e).__name__}: {one_line(e, 200)} "
                           f"(traceback in {_save_traceback()}; please report it)") from None
    return wrapper


def _save_traceback() -> str:
    import tempfile
    import traceback
    fd, path = tempfile.mkstemp(prefix="cvflow-traceback-", suffix=".txt")
    with open(fd, "w") as fh:
        fh.write(traceback.format_exc())
    return path


def _root_verbosity() -> tuple[int, bool]:
    """-v/-q given before the command (``cvflow -q run ...``)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return 0, False
    params = ctx.find_root().params
    return int(params.get("verbose") or 0), bool(params.get("quiet"))


def _setup(verbose: int, quiet: bool):
    from .progress import Progress, setup_logging
    v, q = _root_verbosity()
    verbose, quiet = (verbose or 0) + v, quiet or q
    setup_logging(-1 if quiet else verbose)
    return Progress(quiet=quiet)


verbosity = [
    click.option("-v", "--verbose", count=True, help="More log output."),
    click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
]


def with_verbosity(f):
    for opt in reversed(verbosity):
        f = opt(f)
    return f


class _Cli(click.Group):
    """The command group, with click's usage errors (an unknown option, a bad choice, a
    missing argument) in one line, like every other input error, instead of click's three
    (usage, hint, error); exit status 2 as click gives them."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare `cvflow` (click ≥ 8.2): the help, as click shows it
                e.show()
                sys.exit(e.exit_code)
            where = e.ctx.command_path if e.ctx is not None else "cvflow"
            click.echo(f"{where}: error: {e.format_message().rstrip('.')}; see {where} --help", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cvflow")
@click.option("-v", "--verbose", count=True, help="More log output (also accepted after the command).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors (also accepted after the command).")
def main(verbose, quiet):
    """cvflow learns collective variables (CVs) while it samples.

    \b
    Typical use:
      cvflow init --example entropic-switch   # write a commented config
      cvflow validate config.yaml             # check it without running
      cvflow run config.yaml                  # the whole loop, then production
      cvflow status runs/NAME                 # where a run stands
    """


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@with_verbosity
@_guard
def validate(config, verbose, quiet):
    """Check CONFIG (keys, units, files, the system and the CV) without running anything."""
    _setup(verbose, quiet)
    from .config import check_loop_config, load_config
    from .system import build_system
    from .system import choose_platform
    cfg = load_config(config)
    check_loop_config(cfg)
    bundle = build_system(cfg.system, cfg.features.atoms)
    if cfg.execution.backend == "local":  # on a cluster, MD runs on other nodes
        choose_platform(cfg.md.platform, bundle.n_atoms, bundle.system)
    if cfg.bias.cv is not None:
        import tempfile
        from .cvcheck import checked_cv
        from .initial_cv import initial_grid, resolve_initial_cv
        with tempfile.TemporaryDirectory() as tmp:
            path = resolve_initial_cv(cfg, bundle, tmp)
            checked_cv(path, bundle)
            initial_grid(cfg, bundle, path)
    ts = cfg.model.transition_states
    if ts is not None and ts.source == "file":
        from .transition_states import file_frames
        file_frames(ts.file, bundle)
    from .states import check_states
    check_states(cfg, bundle)
    from .bias import resolve_engine
    engine = resolve_engine(cfg.bias.engine, stride=cfg.bias.stride)
    kind = "toy potential" if bundle.is_toy else f"{bundle.n_atoms} atoms, {cfg.system.solvent}"
    gen = "; a generator section for cvflow generate" if cfg.generator is not None else ""
    gen += "; a cg section for cvflow cg" if cfg.cg is not None else ""
    stride = (f", the bias every {cfg.bias.stride} steps ({cfg.bias.stride * cfg.md.timestep * 1000:g} fs between "
              "impulses)" if cfg.bias.stride > 1 and engine == "native" else "")
    for_run = "cvflow run: " if gen else ""  # the engine is `cvflow run`'s; cg and generate run no bias
    click.echo(f"{config}: OK ({kind}; {for_run}engine {engine}{stride}{gen})")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--cv", "cv_path", type=click.Path(dir_okay=False), required=True,
              help="TorchScript CV: positions (n_atoms, 3) in nm -> 1-D tensor of 1 or 2 values.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--steps", type=int, default=None, help="MD steps (default: md.steps of the config).")
@click.option("--grid", "grids", multiple=True, metavar="MIN,MAX,BINS[,periodic]",
              help="eABF grid of one CV dimension (repeat for 2-D); MIN and MAX may be multiples of pi, "
                   "e.g. -pi,pi,36,periodic for an angle. Default: bias.grid, or the CV's range.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUT.")
@with_verbosity
@_guard
def sample(config, cv_path, out, steps, grids, resume, verbose, quiet):
    """Run one eABF-biased trajectory on a given CV.

    Writes the trajectory, colvar.csv (step, time, CV, lambda), fes.csv (CZAR free energy,
    kJ/mol) and state.xml + checkpoint.chk into OUT.
    """
    progress = _setup(verbose, quiet)
    from .bias import resolve_engine
    from .config import ConfigError, load_config
    from .cvcheck import checked_cv
    from .fes import Grid
    from .initial_cv import initial_grid
    from .progress import log
    from .sampler import install_signal_handlers, run_segment
    from .system import build_system, choose_platform
    cfg = load_config(config)
    if steps is not None:
        if steps <= 0:
            raise ConfigError(f"--steps must be positive, got {steps}")
        cfg.md.steps = steps
    bundle = build_system(cfg.system, cfg.features.atoms)
    choose_platform(cfg.md.platform, bundle.n_atoms, bundle.system)
    cv_dim = checked_cv(cv_path, bundle, key="--cv").dim  # (the evaluator itself is not kept: see cvflow.arena)
    engine = resolve_engine(cfg.bias.engine, cfg.execution.walkers, cfg.bias.stride)
    if engine == "none":
        engine = "native"
    if grids:
        if len(grids) != cv_dim:
            raise ConfigError(f"--grid: given {len(grids)} time(s), but {Path(cv_path).name} has {cv_dim} "
                              f"output(s); give one --grid per output")
        from .config import MAX_GRID_CELLS, cells_of
        dims = [_parse_grid(g) for g in grids]
        if cells_of(dims) > MAX_GRID_CELLS:
            raise ConfigError(f"--grid: {cells_of(dims):,} cells; at most {MAX_GRID_CELLS:,} are allowed")
        grid = Grid.from_dims(dims)
    else:
        b = cfg.bias
        if b.cv_grid is None and b.grid is not None and len(b.grid) != cv_dim:
            raise ConfigError(f"bias.grid has {len(b.grid)} dimension(s) but {Path(cv_path).name} has {cv_dim} "
                              f"output(s); give one grid dimension per output (or --grid)")
        grid = initial_grid(cfg, bundle, cv_path)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"--out: {out} is not empty; use --resume to continue it or choose another directory")
    log.info(f"sampling {cfg.md.steps} steps with the {engine} engine on grid "
             f"{grid.to_list()} -> {out}")
    install_signal_handlers()
    if cfg.execution.walkers > 1:
        from .walkers import run_walkers
        res = run_walkers(cfg, bundle, out, cfg.md.steps, cfg.seed, cv_path=Path(cv_path), grid=grid, engine=engine)
        what = f"{cfg.execution.walkers} walkers, {res.steps} steps in all"
    else:
        res = run_segment(cfg, bundle, out, cfg.md.steps, cfg.seed, cv_path=Path(cv_path), grid=grid, engine=engine,
                          progress=progress.md("MD", cfg.md.timestep))
        what = f"{res.steps} steps"
    click.echo(f"{out}: {what}, {res.frames} frames, {res.steps_per_second:,.0f} steps/s "
               f"on {res.platform}; free energy in {out / 'fes.csv'}")


def _parse_grid(text: str):
    from .config import ConfigError, GridDim
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 4 and parts[3].lower() != "periodic":
            raise ValueError
        if len(parts) not in (3, 4):
            raise ValueError
        return GridDim(min=parts[0], max=parts[1], bins=int(parts[2]), periodic=len(parts) == 4)
    except Exception:
        raise ConfigError(f"--grid: expected MIN,MAX,BINS[,periodic] with MIN < MAX, got {text!r}") from None


@main.command("make-cv")
@click.argument("kind", type=click.Choice(["torsions"]))
@click.argument("pdb", type=click.Path(dir_okay=False))
@click.option("--phi-psi", is_flag=True, help="The backbone (phi, psi) of the first residue that has both.")
@click.option("--quad", "quads", multiple=True, metavar="I,J,K,L",
              help="Zero-based atom indices of one torsion (repeat for a 2-D CV).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True, help="The .pt file to write.")
@_guard
def make_cv(kind, pdb, phi_psi, quads, output):
    """Write a hand-made TorchScript CV for the system in PDB.

    \b
    torsions: dihedral angles in radians, in (-pi, pi]; bias them on a periodic grid:
      cvflow make-cv torsions systems/alanine-dipeptide/ala2.pdb --phi-psi -o phipsi.pt
      cvflow sample configs/ala2-vacuum.yaml --cv phipsi.pt --out runs/phipsi \\
          --grid=-pi,pi,36,periodic --grid=-pi,pi,36,periodic
    """
    import mdtraj as md
    from .config import ConfigError
    from .cvs import ramachandran_quads, save_torsion_cv
    if not Path(pdb).is_file():
        raise ConfigError(f"PDB file not found: {pdb}")
    top = md.load_topology(pdb)
    if phi_psi == bool(quads):
        raise ConfigError("give either --phi-psi or one or two --quad I,J,K,L")
    if phi_psi:
        chosen = ramachandran_quads(top)
    else:
        try:
            chosen = [[int(v) for v in q.split(",")] for q in quads]
        except ValueError:
            raise ConfigError(f"--quad: expected four integers I,J,K,L, got {quads}") from None
        bad = [q for q in chosen if len(q) != 4 or not all(0 <= i < top.n_atoms for i in q)]
        if bad or len(chosen) > 2:
            raise ConfigError(f"--quad: need one or two quadruples of atom indices in [0, {top.n_atoms}), got {quads}")
    save_torsion_cv(chosen, top.n_atoms, output)
    click.echo(f"{output}: torsions {chosen} of {top.n_atoms} atoms")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished stage.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: 'output' of the config).")
@with_verbosity
@_guard
def run(config, resume, out, verbose, quiet):
    """Run the whole loop on CONFIG: learn a CV, bias on it, reweight, learn again until
    the CV stops changing, then production sampling on the final CV."""
    progress = _setup(verbose, quiet)
    from .config import ConfigError, load_config
    from .progress import log
    from .sampler import install_signal_handlers
    from .workflow import Workflow, prepare_run_dir
    cfg = load_config(config)
    run_dir = Path(out) if out else cfg.output
    if run_dir is None:
        raise ConfigError("output: no run directory; set 'output:' in the config or pass --out")
    from . import artifacts as art
    from .progress import add_logfile
    wf = Workflow(cfg, run_dir, progress)
    resolved = prepare_run_dir(cfg, run_dir, resume)
    add_logfile(Path(run_dir) / "run.log")
    _record_engine(run_dir, resolved, wf.engine)
    log.info(f"run directory {run_dir}; bias engine {wf.engine}; config {config}")
    _warn_recorded_versions(config)
    install_signal_handlers()
    with art.Heartbeat(run_dir):
        summary = wf.run()
    from .workflow import score_text
    last = summary["iterations"][-1]
    state = "converged" if summary["converged"] else "not converged"
    click.echo(f"{run_dir}: {state} after {len(summary['iterations'])} iterations "
               f"(0 to {last['index']}; last: {score_text(last)}); "
               f"final CV {summary['final_cv']}, free energy {summary['final_fes']}"
               + (f" (reweighted histogram: {summary['final_fes_reweighted']})"
                  if summary.get("final_fes_reweighted") else ""))


def _warn_recorded_versions(config) -> None:
    """Where CONFIG is a run's config.resolved.yaml, log the libraries whose version changed."""
    from .progress import log
    from .workflow import recorded_version_changes
    changed = recorded_version_changes(config)
    if changed:
        log.warning(f"{config} was recorded with other versions ({'; '.join(changed)}): "
                    f"the same seed may not give the same numbers")


def _record_engine(run_dir, resolved, engine):
    import yaml
    from . import artifacts as art
    resolved["engine"] = engine
    art.write_text(Path(run_dir) / "config.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--from", "from_run", type=click.Path(file_okay=False), default=None,
              help="A finished cvflow run whose frames and weights train the flow (generator.frames, frame_weights).")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: RUN_DIR/generate with --from, else <output>-generate).")
@click.option("--resume", is_flag=True, help="Continue an interrupted generate run in OUT.")
@with_verbosity
@_guard
def generate(config, from_run, out, resume, verbose, quiet):
    """Train a Boltzmann generator (a normalizing flow) on the energy and on frames, draw
    samples and reweight them to free-energy differences between states.

    Writes samples (samples.npy, or samples.dcd + topology.pdb), log_weights.npy,
    generate.json (ESS, state free energies with bootstrap errors), training.csv and plots
    in report/.
    """
    progress = _setup(verbose, quiet)
    from .generate import GenerateRun, format_generate, prepare_generate_dir
    cfg, from_run, out = _generative_inputs(config, from_run, out, "generator", "generate",
                                            "'Boltzmann generators'")
    _run_generative(GenerateRun(cfg, out, from_run, progress), prepare_generate_dir, format_generate, resume,
                    "generate", config)


def _generative_inputs(config, from_run, out, section: str, name: str, readme: str):
    """The config (with its ``section``), the run that gives frames (checked) and the
    output directory: --out, else RUN_DIR/<name> with --from, else <output>-<name>."""
    from .config import ConfigError, load_config
    cfg = load_config(config)
    if getattr(cfg, section) is None:
        raise ConfigError(f"{config}: no {section} section; cvflow {name} needs one (see the README, {readme})")
    if from_run is not None:
        from_run = Path(from_run)
        if not (from_run / "manifest.json").exists():
            raise ConfigError(f"--from: {from_run} is not a cvflow run directory (no manifest.json)")
    if out is None:
        if from_run is not None:
            out = from_run / name
        elif cfg.output is not None:
            out = Path(str(cfg.output) + f"-{name}")
        else:
            raise ConfigError("--out: no output directory; pass --out or set 'output:' in the config")
    return cfg, from_run, Path(out)


def _run_generative(run, prepare, fmt, resume: bool, name: str, config) -> None:
    """Prepare the output directory, log to it, run the stages and print the summary."""
    from .progress import add_logfile, log
    from .sampler import install_signal_handlers
    out = run.out
    prepare(run.cfg, out, resume)
    add_logfile(out / f"{name}.log")
    log.info(f"{name}: {out}; config {config}" + (f"; frames from {run.from_run}" if run.from_run else ""))
    _warn_recorded_versions(config)
    install_signal_handlers()
    info = run.run()
    for line in fmt(info):
        click.echo(f"{out}: {line}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--from", "from_run", type=click.Path(file_okay=False), default=None,
              help="A finished cvflow run whose frames and weights train the model by the ELBO (forward KL).")
@click.option("--no-data", is_flag=True, help="Train by the reverse KL to exp(-U/kT) alone, from the energy (no MD).")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: RUN_DIR/cg with --from, else <output>-cg).")
@click.option("--resume", is_flag=True, help="Continue an interrupted cg run in OUT.")
@with_verbosity
@_guard
def cg(config, from_run, no_data, out, resume, verbose, quiet):
    """Probabilistic coarse-graining: a VAE whose latent variable is the CV and whose
    decoder generates configurations, learned from a run's frames (--from, with credible
    intervals from a Bayesian decoder) or from the energy alone (--no-data).

    Writes generated configurations (samples.npy, or samples.dcd + topology.pdb),
    cg.json (observables and state populations with intervals), training.csv,
    tempering.csv (--no-data) and plots in report/.
    """
    progress = _setup(verbose, quiet)
    from .cg import CGRun, format_cg, prepare_cg_dir
    from .config import ConfigError
    if (from_run is None) == (not no_data):
        raise ConfigError("cvflow cg needs one of --from RUN_DIR (train on its frames) and --no-data (train on "
                          "the energy alone)")
    cfg, from_run, out = _generative_inputs(config, from_run, out, "cg", "cg", "'Probabilistic coarse-graining'")
    _run_generative(CGRun(cfg, out, from_run, progress), prepare_cg_dir, format_cg, resume, "cg", config)


EXAMPLES = ("entropic-switch", "ala2-vacuum", "ala2-implicit", "ala2-paper", "chignolin", "circle-two-channels",
            "cg-double-well", "bg-double-well")
# the structure each molecular example reads (or another input file), written beside its config
EXAMPLE_FILES = {"ala2-vacuum": "alanine-dipeptide.pdb", "ala2-implicit": "alanine-dipeptide.pdb",
                "ala2-paper": "alanine-dipeptide.pdb", "chignolin": "chignolin.pdb",
                "circle-two-channels": "circle-ts.txt"}
# the command that runs an example, when it is not `cvflow run`
EXAMPLE_COMMANDS = {"cg-double-well": "cvflow cg {} --no-data", "bg-double-well": "cvflow generate {}"}


@main.command()
@click.option("--example", type=click.Choice(EXAMPLES), default="entropic-switch", show_default=True,
              help="Which system the config is for.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="config.yaml", show_default=True,
              help="Where to write the config (never overwritten).")
@_guard
def init(example, output):
    """Write a commented example config (and, for a molecule, its PDB beside it):
    entropic-switch (a 2-D toy, a minute), ala2-vacuum and ala2-implicit (alanine
    dipeptide, minutes), ala2-paper (the paper's 10-ns protocol, under an hour on 2 cores),
    chignolin (a 10-residue protein in water, for a GPU), circle-two-channels (two
    pathways, an autoencoder with two decoders, with saddle frames beside it),
    cg-double-well (coarse-graining from the energy alone: cvflow cg --no-data),
    bg-double-well (a Boltzmann generator: cvflow generate).

    \b
    Then: cvflow validate config.yaml && cvflow run config.yaml
    """
    from importlib import resources
    from .config import ConfigError
    out = Path(output)
    if out.exists():
        raise ConfigError(f"{out}: the file exists; choose another name with -o")
    pkg = resources.files("cvflow") / "examples"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text((pkg / f"{example}.yaml").read_text())
    written, kept = [str(out)], ""
    if example in EXAMPLE_FILES:
        beside = out.parent / EXAMPLE_FILES[example]
        if not beside.exists():
            beside.write_text((pkg / EXAMPLE_FILES[example]).read_text())
            written.append(str(beside))
        else:
            kept = f"; kept the existing {beside}, which the config reads"
    command = EXAMPLE_COMMANDS.get(example, "cvflow run {}").format(out)
    click.echo(f"wrote {', '.join(written)}{kept}; next: cvflow validate {out} && {command}")


def _console():
    """A rich Console: colours and boxes on a terminal, plain ASCII text otherwise."""
    from rich.console import Console
    interactive = sys.stdout.isatty()
    return Console(force_terminal=interactive, no_color=not interactive, highlight=False,
                   safe_box=True, width=None if interactive else 100)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_guard
def status(run_dir):
    """Print a table of RUN_DIR's iterations so far (regscore, threshold, ESS, frames, wall
    time) and the stage it is in."""
    from .report import load_run, status_table
    run = load_run(run_dir)
    table = status_table(run)
    if not sys.stdout.isatty():
        from rich import box
        table.box = box.ASCII
    # where the run stands, on a line of its own: as the table's title it wraps to the table's width
    click.echo(table.title)
    table.title = None
    _console().print(table)
    _echo_states(run)


def _echo_states(run) -> None:
    """The states' populations and free energies: production's, else the last iteration's."""
    from .report import latest_states
    from .states import format_states
    label, states = latest_states(run)
    if states:
        how = {"frozen": "exact weights of the frozen-bias stage", "unbiased": "unbiased"}.get(
            states.get("weights"), "reweighted")
        click.echo(f"states ({label}, {how}; kJ/mol, block-bootstrap errors):")
        for line in format_states(states):
            click.echo(line)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--iteration", type=int, default=None, help="Iteration (default: production, else the last one).")
@click.option("--reweighted", is_flag=True,
              help="The production's reweighted histogram of ξ (fes_reweighted.csv) instead of its CZAR fes.csv.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="fes.png", show_default=True)
@_guard
def fes(run_dir, iteration, reweighted, output):
    """Plot a free energy of RUN_DIR (kJ/mol, with a kT scale) to a PNG."""
    from .report import fes_path, load_run, plot_fes
    run = load_run(run_dir)
    path, label = fes_path(run, iteration, reweighted)
    plot_fes(path, run.kT, Path(output), label)
    click.echo(f"{output}: free energy of {label} ({path})")
    _echo_states(run)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out", type=click.Path(file_okay=False), default=None,
              help="Where to write it (default: RUN_DIR/report; for a run directory you cannot write to).")
@with_verbosity
@_guard
def report(run_dir, out, verbose, quiet):
    """Write RUN_DIR/report/report.html with its PNGs: free energies, the CV map, convergence,
    training curves and the reweighting factors."""
    _setup(verbose, quiet)
    from .report import write_report
    path = write_report(run_dir, out)
    click.echo(f"{path}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--to", "to", type=click.Path(file_okay=False), required=True, help="A new or empty directory.")
@_guard
def export(run_dir, to):
    """Gather what production elsewhere needs: cv.pt, plumed.dat with cv_plumed.pt (GROMACS or
    LAMMPS with PLUMED's drr and pytorch modules), the reference structure, fes.csv."""
    from .report import export_run
    files = export_run(run_dir, to)
    click.echo(f"{to}: " + ", ".join(f.name for f in files))


@main.command()
def doctor():
    """Report which bias engines and OpenMM platforms are usable here, and why not."""
    import openmm as mm
    from .bias import resolve_engine
    from .bias.plumed import plumed_status
    from .system import platform_problem
    plats = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    click.echo(f"OpenMM {mm.__version__}: platforms {', '.join(plats)}")
    for name in ("CUDA", "OpenCL", "CPU", "Reference"):
        why = platform_problem(name)
        click.echo(f"platform {name}: {'usable' if why is None else 'not usable: ' + why}")
    click.echo("engine native: usable (built in)")
    st = plumed_status()
    click.echo(f"engine plumed: {'usable' if st.usable else 'not usable'}: {st.reason}")
    if st.usable:
        try:
            import openmmplumed  # noqa: F401
            click.echo("  driven through openmmplumed's PlumedForce")
        except ImportError:
            click.echo("  driven through a PythonForce and PLUMED's C API (openmmplumed is not installed)")
    click.echo(f"bias.engine: auto -> {resolve_engine('auto')}")


if __name__ == "__main__":
    main()
