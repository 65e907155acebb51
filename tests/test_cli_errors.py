"""Every bad input gets exit status 2, one or two lines that name the problem, no traceback."""
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ALA2_PDB, ES_CONFIG, random_neural_cv

ES = yaml.safe_load(ES_CONFIG.read_text())


def _write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _es(**changes):
    import copy
    d = copy.deepcopy(ES)
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            d.setdefault(section, {})[leaf] = value
        else:
            d[section] = value
    return d


def _ala2(**system):
    return {"system": {"pdb": str(ALA2_PDB), **system}, "md": {"steps": 100, "report_interval": 10},
            "output": "out"}


class _Three(torch.nn.Module):
    def forward(self, pos):
        return pos[0]


def _cases(tmp_path):
    bad_pdb = tmp_path / "bad.pdb"
    bad_pdb.write_text(ALA2_PDB.read_text().replace(" CB  ALA", " CX  ALA"))
    wrong_atoms = random_neural_cv(tmp_path / "ala2cv.pt", __import__("conftest").build_ala2())
    three = tmp_path / "three.pt"
    torch.jit.script(_Three()).save(str(three))
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    return [
        ("unknown key", ["validate"], _es(md__timestpe="2 fs"), "did you mean 'timestep'"),
        ("bare number", ["validate"], _es(md__temperature=300), "md.temperature"),
        ("wrong unit", ["validate"], _es(md__timestep="2 nm"), "md.timestep"),
        ("zero steps", ["validate"], _es(md__steps=0), "md.steps"),
        ("frozen with walkers", ["validate"],
         _es(convergence={"production_frozen_steps": 1000}, execution={"walkers": 2}), "production_frozen_steps"),
        ("negative frozen steps", ["validate"], _es(convergence={"production_frozen_steps": -1}),
         "convergence.production_frozen_steps"),
        ("frozen extension without a frozen stage", ["validate"],
         _es(convergence={"production_frozen_min_transitions": 30}), "production_frozen_steps"),
        ("frozen extension without states", ["validate"],
         _es(convergence={"production_frozen_steps": 1000, "production_frozen_min_transitions": 30}),
         "production_frozen_min_transitions"),
        ("refreeze off the report interval", ["validate"],
         _es(convergence={"production_frozen_steps": 1000, "production_frozen_refreeze": 75}),
         "production_frozen_refreeze (75) is not a multiple of md.report_interval"),
        ("frozen cap below the stage", ["validate"],
         _es(convergence={"production_frozen_steps": 1000, "production_frozen_max_steps": 500}),
         "convergence.production_frozen_max_steps (500)"),
        ("negative steps", ["validate"], _es(md__steps=-5), "md.steps"),
        ("grid min>=max", ["validate"], _es(bias__grid=[{"min": 1.0, "max": 1.0, "bins": 10}]), "grid min"),
        ("missing pdb", ["validate"], _ala2() | {"system": {"pdb": "nope.pdb"}}, "nope.pdb"),
        ("missing forcefield", ["validate"], _ala2(forcefield=["nonexistent-ff.xml"]), "nonexistent-ff.xml"),
        ("unmatched residue", ["validate"], _ala2() | {"system": {"pdb": str(bad_pdb)}}, "residue 1 (ALA)"),
        ("cv atom count", ["validate"], _es(bias__cv=str(wrong_atoms)), "22 atoms"),
        ("cv shape", ["validate"], _es(bias__cv=str(three)), "returns shape"),
        ("yaml syntax", ["validate"], "system:\n  potential: [x\nmd: {", "line"),
        ("unwritable output", ["run"], _es(output=str(blocker / "run")), "cannot write"),
        ("non-empty output", ["run"], _es(output=str(full)), "not empty"),
        ("engine unavailable", ["validate"], _es(bias__engine="plumed"), "plumed"),
        ("stride off the report steps", ["validate"], _es(bias__stride=3), "bias.stride (3)"),
        ("stride with plumed", ["validate"], _es(bias__engine="plumed", bias__stride=2), "bias.stride: 2"),
        ("zero stride", ["validate"], _es(bias__stride=0), "bias.stride"),
        ("stride too long for a molecule", ["validate"], _ala2() | {"bias": {"stride": 10}}, "20 fs between"),
        ("cutoff over half the water box", ["validate"], _ala2(solvent="explicit", padding="0.6 nm", cutoff="1.0 nm"),
         "system.cutoff: 1 nm is more than half the water box"),
        ("negative pin offset", ["validate"], _es(md__pin_offset=-1), "md.pin_offset"),
        # a coupling, a time constant or a box size at or below zero: one line naming the key
        # (for 'auto' | a quantity, one line too, not one per member of the union)
        ("zero kappa", ["validate"], _es(bias__kappa="0 kJ/mol/nm^2"), "bias.kappa: must be positive, got 0"),
        ("negative kappa", ["validate"], _ala2() | {"bias": {"kappa": "-3 kJ/mol/cv^2"}}, "bias.kappa: must be positive"),
        ("kappa of another dimension", ["validate"], _es(bias__kappa="300 kJ"), "bias.kappa: '300 kJ' is not a force"),
        ("zero tau", ["validate"], _es(bias__tau="0 ps"), "bias.tau: must be positive"),
        ("negative wall kappa", ["validate"], _es(bias__wall_kappa="-5 kJ/mol/nm^2"), "bias.wall_kappa"),
        ("zero lambda mass", ["validate"], _es(bias__lambda_mass="0 kJ/mol*ps^2/nm^2"), "bias.lambda_mass"),
        ("negative lambda friction", ["validate"], _es(bias__friction="-1 /ps"), "bias.friction: must not be negative"),
        ("negative cutoff", ["validate"], _ala2(cutoff="-1 nm"), "system.cutoff: must be positive"),
        # a state's selection or torsion is checked on the start structure, before any MD
        ("state selection matches nothing", ["validate"],
         _ala2() | {"states": {"A": {"distance": {"between": ["name CA", "name XYZ"], "range": ["0 nm", "1 nm"]}}}},
         "states.A.distance: the selection 'name XYZ' matches no atom"),
        ("state selection matches nothing, run", ["run"],
         _ala2() | {"output": str(tmp_path / "r-states"),
                    "states": {"A": {"distance": {"between": ["name CA", "name XYZ"], "range": ["0 nm", "1 nm"]}}}},
         "states.A.distance"),
        ("state torsion of a residue without it", ["validate"], _ala2() | {"states": {"A": {"psi": [0, 100], "residue": 7}}},
         "states: residue 7 has no psi torsion"),
        ("threshold above 1", ["validate"], _es(convergence={"threshold": 2}), "convergence.threshold: Input should be "
         "less than or equal to 1 (or 'auto')"),
    ] + ([] if torch.cuda.is_available() else [
        ("no cuda for training", ["validate"], _es(model__device="cuda"), "model.device: cuda"),
        ("no cuda for training (run)", ["run"], _es(model__device="cuda", output=str(tmp_path / "nocuda")),
         "model.device: cuda")])


def test_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.delenv("PLUMED_KERNEL", raising=False)
    runner = CliRunner()
    failures = []
    for name, cmd, data, needle in _cases(tmp_path):
        cfg = _write(tmp_path, data, f"{name.replace(' ', '_')}.yaml")
        result = runner.invoke(main, cmd + [str(cfg)])
        out = result.output
        ok = (result.exit_code == 2 and needle in out and "Traceback" not in out
              and len(out.strip().splitlines()) <= 2 and not isinstance(result.exception, Exception)
              or (isinstance(result.exception, SystemExit) and result.exit_code == 2 and needle in out
                  and "Traceback" not in out and len(out.strip().splitlines()) <= 2))
        if not ok:
            failures.append(f"{name}: exit {result.exit_code}, output {out!r}, exception {result.exception!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("args, needle", [
    (["init", "--example", "nope"], "cvflow init: error: Invalid value for '--example'"),
    (["run"], "cvflow run: error: Missing argument 'CONFIG'"),
    (["run", "--bogus", "c.yaml"], "cvflow run: error: No such option '--bogus'"),
    (["frob"], "cvflow: error: No such command 'frob'"),
])
def test_command_line_mistakes_are_one_line(args, needle):
    """click's usage errors (a bad choice, a missing argument, an unknown option or command)
    are one line that names the command and points at its --help, exit status 2, as every
    other input error; --help and --version still exit 0."""
    runner = CliRunner()
    result = runner.invoke(main, args, prog_name="cvflow")
    out = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, out)
    assert len(out.splitlines()) == 1 and out.startswith(needle) and out.endswith("--help"), out
    assert "Traceback" not in out and isinstance(result.exception, SystemExit)
    for ok in (["--version"], ["init", "--help"]):
        assert runner.invoke(main, ok).exit_code == 0


def test_sample_refuses_non_empty_out(tmp_path, x_cv):
    out = tmp_path / "o"
    out.mkdir()
    (out / "f").write_text("")
    result = CliRunner().invoke(main, ["sample", str(ES_CONFIG), "--cv", str(x_cv), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output


def _one_line_exit_2(result, needle) -> str | None:
    """None when the command failed as a user error should: exit 2, at most two lines that
    contain ``needle``, no traceback; else what went wrong."""
    out = result.output
    ok = (result.exit_code == 2 and needle in out and "Traceback" not in out
          and len(out.strip().splitlines()) <= 2)
    return None if ok else f"exit {result.exit_code}, output {out!r}, exception {result.exception!r}"


def test_bad_inputs_found_in_use(tmp_path, x_cv, es_run):
    """Issue 24's table: each case exits 2 with one line that names the problem, no
    traceback, and leaves no run directory that blocks the corrected command."""
    from cvflow.system import platform_problem
    _, run = es_run
    blocker = tmp_path / "afile"
    blocker.write_text("")
    xy_cv = __import__("conftest").linear_toy_cv(tmp_path / "xy.pt", [[1.0, 0.0], [0.0, 1.0]])
    not_ts = tmp_path / "pickled.pt"
    torch.save({"weights": torch.zeros(3)}, str(not_ts))

    class _Step(torch.nn.Module):
        def forward(self, pos):
            return torch.round(pos[0, :1] * 10)
    step_cv = tmp_path / "step.pt"
    torch.jit.script(_Step()).save(str(step_cv))
    malformed = tmp_path / "malformed.pdb"
    malformed.write_text("\n".join(ln[:30] + "   abc  " + ln[38:] if ln.startswith("ATOM      5") else ln
                                   for ln in ALA2_PDB.read_text().splitlines()) + "\n")
    dup = tmp_path / "dup.yaml"
    dup.write_text(ES_CONFIG.read_text() + "\nmd:\n  steps: 10\n")
    cases = [
        ("negative temperature", ["validate"], _es(md__temperature="-300 K"), "md.temperature"),
        ("negative temperature, run", ["run"], _es(md__temperature="-300 K", output=str(tmp_path / "r1")),
         "md.temperature"),
        ("huge grid", ["validate"], _ala2() | {"bias": {"bins": 100000}}, "bias.bins"),
        ("1 ns timestep", ["validate"], _ala2() | {"md": {"timestep": "1 ns", "steps": 100, "report_interval": 10}},
         ".yaml: md.timestep: 1e+06 fs is too long"),
        ("step-function CV", ["validate"], _es(bias__cv=str(step_cv)), "cannot be differentiated"),
        ("not TorchScript", ["validate"], _es(bias__cv=str(not_ts)), "torch.jit.script"),
        ("malformed PDB", ["validate"], _ala2() | {"system": {"pdb": str(malformed)}}, "system.pdb"),
        ("bad selection", ["validate"], _ala2() | {"features": {"atoms": "name CA and resid foo ((("}},
         "features.atoms"),
    ]
    if platform_problem("CUDA") is not None:  # a machine without a GPU (CI)
        cases.append(("CUDA without a GPU", ["validate"], _es(md__platform="CUDA"), "md.platform"))
        cases.append(("CUDA without a GPU, run", ["run"], _es(md__platform="CUDA", output=str(tmp_path / "r2")),
                      "md.platform"))
    runner = CliRunner()
    failures = []
    for name, cmd, data, needle in cases:
        cfg = _write(tmp_path, data, f"{name.replace(' ', '_').replace(',', '')}.yaml")
        why = _one_line_exit_2(runner.invoke(main, cmd + [str(cfg)]), needle)
        if why:
            failures.append(f"{name}: {why}")
    # nothing stranded: the runs that were refused left no directory behind
    for d in ("r1", "r2"):
        if (tmp_path / d).exists() and any((tmp_path / d).iterdir()):
            failures.append(f"{d}: a refused run left {sorted(p.name for p in (tmp_path / d).iterdir())}")
    argv_cases = [
        ("duplicate section", ["validate", str(dup)], "appears twice"),
        ("one grid for a 2-D CV", ["sample", str(ES_CONFIG), "--cv", str(xy_cv), "--out", str(tmp_path / "s1"),
                                   "--grid=-2,2,40", "--steps", "100"], "--grid"),
        ("sample into a file's place", ["sample", str(ES_CONFIG), "--cv", str(x_cv), "--out", str(blocker / "s"),
                                        "--grid=-2,2,40", "--steps", "100"], str(blocker)),
        ("fes into a file's place", ["fes", str(run), "-o", str(blocker / "f.png")], str(blocker)),
        ("report into a file's place", ["report", str(run), "--out", str(blocker / "rep")], str(blocker)),
        ("export into a file's place", ["export", str(run), "--to", str(blocker / "exp")], str(blocker)),
        ("resume of nothing", ["run", str(ES_CONFIG), "--out", str(tmp_path / "typo"), "--resume"],
         "nothing to resume"),
    ]
    for name, argv, needle in argv_cases:
        why = _one_line_exit_2(runner.invoke(main, argv), needle)
        if why:
            failures.append(f"{name}: {why}")
    assert not (tmp_path / "typo").exists()
    assert not failures, "\n".join(failures)


def test_messages_are_whole(tmp_path):
    """A bad MDTraj selection gives one short line, not the parser's dump; a file that is not
    TorchScript is named without cutting a word."""
    runner = CliRunner()
    cfg = _write(tmp_path, _ala2() | {"features": {"atoms": "name CA and resid foo bar ((("}})
    out = runner.invoke(main, ["validate", str(cfg)]).output
    assert len(out) < 400, out
    not_ts = tmp_path / "pickled.pt"
    torch.save({"weights": torch.zeros(3)}, str(not_ts))
    cfg = _write(tmp_path, _es(bias__cv=str(not_ts)), "nt.yaml")
    out = runner.invoke(main, ["validate", str(cfg)]).output.strip()
    assert out.endswith(("...", ")", ".")) or out.split()[-1].isalpha(), out


def test_a_run_that_failed_at_start_up_can_be_run_again(tmp_path):
    """A run directory with nothing computed (here: stopped before the first MD step) is
    used again by a plain run and by --resume with a changed config."""
    from cvflow.workflow import run_dir_state
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text('{"stages": {}, "current": "iter_000/md"}')
    (out / "config.resolved.yaml").write_text(yaml.safe_dump({"config": {"md": {"temperature": "1 K"}}}))
    (out / "iter_000" / "md" / "ckpt").mkdir(parents=True)
    (out / "iter_000" / "md" / "ckpt" / "progress.json").write_text('{"step": 0}')
    assert run_dir_state(out) == "stranded"
    cfg = _write(tmp_path, _es(md__steps=2000, md__report_interval=100, output=str(out),
                               convergence={"max_iterations": 1, "production_steps": 1000}))
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    assert (out / "summary.json").exists() and (out / "run.log").exists()
    assert run_dir_state(out) == "started"


def test_a_unicode_run_directory_works(tmp_path):
    """MDTraj's DCD plugin opens ASCII names only; cvflow writes and reads DCDs under any name."""
    from cvflow.config import load_config
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from conftest import ROOT
    cv = tmp_path / "phipsi.pt"
    runner = CliRunner()
    assert runner.invoke(main, ["make-cv", "torsions", str(ALA2_PDB), "--phi-psi", "-o", str(cv)]).exit_code == 0
    out = tmp_path / "résultats ü" / "run"
    res = runner.invoke(main, ["sample", str(ROOT / "configs" / "ala2-quick.yaml"), "--cv", str(cv), "--out", str(out),
                               "--steps", "200", "--grid=-pi,pi,12,periodic", "--grid=-pi,pi,12,periodic", "-q"])
    assert res.exit_code == 0, res.output
    cfg = load_config(ROOT / "configs" / "ala2-quick.yaml")
    frames = load_frames(out, build_system(cfg.system, cfg.features.atoms))
    assert frames.shape[1:] == (22, 3) and len(frames) >= 1


def test_a_run_directory_in_use_is_refused(tmp_path):
    """A second `cvflow run` on a directory that a live process works on is refused, with
    or without --resume (it would clear or corrupt the other run's files)."""
    from cvflow import artifacts as art
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text('{"stages": {}, "current": "iter_000/md"}')
    (out / "config.resolved.yaml").write_text(yaml.safe_dump({"config": {}}))
    cfg = _write(tmp_path, _es(output=str(out)))
    with art.Heartbeat(out, interval=60):
        for extra in ([], ["--resume"]):
            res = CliRunner().invoke(main, ["run", str(cfg), "-q", *extra])
            assert res.exit_code == 2 and "another cvflow process" in res.output, res.output
    assert (out / "manifest.json").exists()
