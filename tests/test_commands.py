"""The commands around a run: init, status, fes, report, export (on one finished quick run)."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cvflow.cli import EXAMPLE_FILES, EXAMPLES, main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("example", EXAMPLES)
def test_init_writes_a_config_that_validates(tmp_path, example):
    cfg = tmp_path / "config.yaml"
    res = invoke("init", "--example", example, "-o", cfg)
    assert res.exit_code == 0, res.output
    assert cfg.read_text().lstrip().startswith("#")  # commented for the user
    if example in EXAMPLE_FILES:
        assert (tmp_path / EXAMPLE_FILES[example]).exists()
    val = invoke("validate", cfg)
    assert val.exit_code == 0, val.output
    # a cg or generator config names the command its bias engine belongs to
    generative = any(k in yaml.safe_load(cfg.read_text()) for k in ("cg", "generator"))
    assert ("cvflow run: engine " in val.output) == generative, val.output


def test_init_examples_name_their_command_and_inputs(tmp_path):
    """The generative examples name the command that runs them, and the two-channel one
    writes its saddle frames where its commented ``transition_states`` line reads them."""
    assert "cvflow cg " in invoke("init", "--example", "cg-double-well", "-o", tmp_path / "cg.yaml").output
    assert "--no-data" in (tmp_path / "cg.yaml").read_text()
    assert "cvflow generate " in invoke("init", "--example", "bg-double-well", "-o", tmp_path / "bg.yaml").output
    res = invoke("init", "--example", "circle-two-channels", "-o", tmp_path / "circle.yaml")
    assert "cvflow run " in res.output and "circle-ts.txt" in res.output
    text = (tmp_path / "circle.yaml").read_text()
    assert "  # transition_states: {source: file, file: circle-ts.txt" in text
    (tmp_path / "circle-ts.yaml").write_text(text.replace("  # transition_states:", "  transition_states:")
                                            .replace("  # consecutive: 2", "  consecutive: 2"))
    val = invoke("validate", tmp_path / "circle-ts.yaml")
    assert val.exit_code == 0, val.output
    from cvflow.config import load_config
    cfg = load_config(tmp_path / "circle-ts.yaml")
    assert Path(cfg.model.transition_states.file) == tmp_path / "circle-ts.txt" and cfg.convergence.consecutive == 2


@pytest.mark.parametrize("example", EXAMPLES)
def test_packaged_examples_are_the_shipped_configs(example):
    """What ``cvflow init`` writes is the repository's configs/EXAMPLE.yaml with more
    comments: every key resolves to the same value except the structure's path, and the
    structure beside it is the same file."""
    from cvflow.config import load_config
    root = Path(__file__).resolve().parents[1]
    shipped = load_config(root / "configs" / f"{example}.yaml").model_dump()
    packaged = load_config(root / "cvflow" / "examples" / f"{example}.yaml").model_dump()
    if packaged["system"]["pdb"] is not None:
        assert Path(packaged["system"]["pdb"]).read_bytes() == Path(shipped["system"]["pdb"]).read_bytes()
        shipped["system"].pop("pdb"), packaged["system"].pop("pdb")
    elif example in EXAMPLE_FILES:  # a toy's input file (saddle frames) is the one in systems/toys
        packaged_file = root / "cvflow" / "examples" / EXAMPLE_FILES[example]
        assert packaged_file.read_bytes() == (root / "systems" / "toys" / EXAMPLE_FILES[example]).read_bytes()
    assert packaged == shipped


def test_init_never_overwrites(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("mine\n")
    res = invoke("init", "-o", cfg)
    assert res.exit_code == 2 and "exists" in res.output and "Traceback" not in res.output
    assert cfg.read_text() == "mine\n"
    # a structure of the same name beside it is kept, and the message says the config reads it
    (tmp_path / "chignolin.pdb").write_text("my structure\n")
    res = invoke("init", "--example", "chignolin", "-o", tmp_path / "chig.yaml")
    assert res.exit_code == 0 and "kept the existing" in res.output and "chignolin.pdb" in res.output, res.output
    assert (tmp_path / "chignolin.pdb").read_text() == "my structure\n"


def test_status_is_plain_text_off_a_terminal(es_run, ala2_run):
    res = invoke("status", ala2_run[0])
    assert res.exit_code == 0 and "finished" in res.output and "\x1b" not in res.output, res.output
    _, run = es_run
    res = invoke("status", run)
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output  # no colour codes in a log file
    assert "finished" in res.output and "production" in res.output
    # one row per iteration, with its regscore (iteration 0 has none)
    rows = [ln for ln in res.output.splitlines() if re.match(r"\|\s+\d+\s+\|", ln)]
    assert len(rows) == len(list(run.glob("iter_[0-9][0-9][0-9]")))
    assert re.search(r"\|\s+1\s+\|.*\|\s+0\.\d{4}\s+\|", res.output)


def test_status_of_a_directory_that_is_not_a_run(tmp_path):
    res = invoke("status", tmp_path)
    assert res.exit_code == 2 and "manifest.json" in res.output and "Traceback" not in res.output


def test_fes_plot_and_a_missing_iteration(es_run, ala2_run, tmp_path):
    res = invoke("fes", ala2_run[0], "--iteration", 1, "-o", tmp_path / "ala2.png")  # a 2-D free energy
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ala2.png").read_bytes()[:4] == b"\x89PNG"
    _, run = es_run
    png = tmp_path / "fes.png"
    res = invoke("fes", run, "-o", png)
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "production" in res.output
    res = invoke("fes", run, "--iteration", 0, "-o", tmp_path / "f0.png")  # unbiased: no free energy
    assert res.exit_code == 2 and "iteration 0 has no free energy" in res.output
    res = invoke("fes", run, "--iteration", 99, "-o", tmp_path / "f99.png")
    assert res.exit_code == 2 and "no iteration 99" in res.output
    res = invoke("fes", run, "--reweighted", "-o", tmp_path / "fr.png")  # the production's reweighted histogram
    assert res.exit_code == 0 and "fes_reweighted.csv" in res.output, res.output
    assert (tmp_path / "fr.png").read_bytes()[:4] == b"\x89PNG"
    res = invoke("fes", run, "--reweighted", "--iteration", 1, "-o", tmp_path / "fr1.png")
    assert res.exit_code == 2 and "has no iteration" in res.output


def test_report_html_links_the_pictures_it_wrote(es_run):
    _, run = es_run
    res = invoke("report", run)
    assert res.exit_code == 0, res.output
    page = (run / "report" / "report.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert {"fes_production.png", "cv_map.png", "convergence.png", "training.png", "weights.png"} <= set(imgs)
    for name in imgs:
        assert (run / "report" / name).read_bytes()[:4] == b"\x89PNG", name


def test_export_gives_the_final_cv(es_run, tmp_path):
    _, run = es_run
    import json
    s = json.loads((run / "summary.json").read_text())
    to = tmp_path / "exported"
    res = invoke("export", run, "--to", to)
    assert res.exit_code == 0, res.output
    names = {p.name for p in to.iterdir()}
    assert {"cv.pt", "plumed.dat", "cv_plumed.pt", "fes.csv"} <= names
    # the exported CV is the run's final CV: same values on random positions
    pos = torch.randn(1, 3, dtype=torch.float64)
    a = torch.jit.load(str(to / "cv.pt"))(pos)
    b = torch.jit.load(str(run / s["final_cv"]))(pos)
    assert torch.equal(a, b)
    assert (to / "fes.csv").read_bytes() == (run / s["final_fes"]).read_bytes()
    plumed = (to / "plumed.dat").read_text()
    assert "PYTORCH_MODEL" in plumed and "DRR" in plumed
    # a second export into the same, now non-empty directory is refused
    again = invoke("export", run, "--to", to)
    assert again.exit_code == 2 and "not empty" in again.output


def test_export_of_ala2_carries_the_reference_structure(ala2_run, tmp_path):
    out, s = ala2_run
    to = tmp_path / "exported"
    res = invoke("export", out, "--to", to)
    assert res.exit_code == 0, res.output
    import mdtraj as md
    ref = md.load(str(to / "reference.pdb"))
    assert ref.n_atoms == 22
    plumed = (to / "plumed.dat").read_text()
    assert "PYTORCH_MODEL" in plumed
    rep = invoke("report", out)
    assert rep.exit_code == 0, rep.output
    assert (Path(out) / "report" / "cv_map.png").exists()


def test_a_moved_run_reports_exports_and_resumes_from_its_kept_inputs(ala2_run, tmp_path):
    """A run directory keeps a copy of its input files (inputs/KEY/NAME). Moved to where
    the PDB it names does not exist (another machine), report, export and --resume from
    its config.resolved.yaml use that copy; the recorded path to it counts as no change."""
    import shutil
    from cvflow.config import load_config
    from cvflow.workflow import prepare_run_dir
    out, _ = ala2_run
    kept = Path(out) / "inputs" / "system.pdb"
    assert [f.name for f in kept.iterdir()] == [Path(yaml.safe_load(
        (Path(out) / "config.resolved.yaml").read_text())["config"]["system"]["pdb"]).name]
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("report"))
    resolved = moved / "config.resolved.yaml"
    record = yaml.safe_load(resolved.read_text())
    gone = tmp_path / "elsewhere" / "ala2.pdb"  # where the PDB was on the machine that ran it
    record["config"]["system"]["pdb"] = str(gone)
    resolved.write_text(yaml.safe_dump(record, sort_keys=False))
    rep = invoke("report", moved)
    assert rep.exit_code == 0, rep.output
    assert (moved / "report" / "cv_map.png").exists() and (moved / "report" / "decoded.pdb").exists()
    res = invoke("export", moved, "--to", tmp_path / "exported")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exported" / "reference.pdb").read_bytes() == next(kept.iterdir()).read_bytes()
    cfg = load_config(resolved)
    assert cfg.system.pdb == (moved / "inputs" / "system.pdb" / "ala2.pdb").resolve()
    prepare_run_dir(cfg, moved, resume=True)  # no "the config differs"
    # a PDB that is neither where the record says nor kept is named in one line
    resolved.write_text(yaml.safe_dump(record, sort_keys=False))  # resuming recorded the copy's path
    shutil.rmtree(moved / "inputs")
    rep = invoke("report", moved)
    assert rep.exit_code == 2 and f"system.pdb: file not found: {gone}" in rep.output, rep.output
    assert len(rep.output.strip().splitlines()) == 1, rep.output


def test_an_input_over_the_size_limit_is_recorded_not_copied(tmp_path, monkeypatch, caplog):
    """keep_inputs copies a small input file into inputs/KEY/NAME. One over
    KEEP_INPUT_MAX_BYTES (here lowered to 1 KiB) is not copied: its path, size and SHA-256
    go to inputs/KEY/NAME.source.json, with a one-line warning naming the key, and a second
    call (a resume) neither copies nor warns again."""
    import hashlib
    import logging
    from conftest import ALA2_PDB
    from cvflow import workflow
    from cvflow.config import Config, SystemConfig
    big = tmp_path / "big.pdb"
    big.write_bytes(Path(ALA2_PDB).read_bytes())
    assert big.stat().st_size > 1024
    cfg = Config(system=SystemConfig(pdb=big))
    run = tmp_path / "run"
    workflow.keep_inputs(cfg, run)
    assert (run / "inputs" / "system.pdb" / "big.pdb").read_bytes() == big.read_bytes()
    monkeypatch.setattr(workflow, "KEEP_INPUT_MAX_BYTES", 1024)
    run = tmp_path / "run2"
    with caplog.at_level(logging.WARNING, logger="cvflow"):
        workflow.keep_inputs(cfg, run)
        workflow.keep_inputs(cfg, run)
    kept = run / "inputs" / "system.pdb"
    assert [f.name for f in kept.iterdir()] == ["big.pdb.source.json"]
    record = yaml.safe_load((kept / "big.pdb.source.json").read_text())
    assert record == {"key": "system.pdb", "path": str(big), "bytes": big.stat().st_size,
                      "sha256": hashlib.sha256(big.read_bytes()).hexdigest()}
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and said[0].startswith("inputs: system.pdb (") and "\n" not in said[0]


def test_report_renders_in_headless_chromium(es_run):
    """The report opens in headless Chromium (Debian's `chromium`) with no console messages;
    skipped where Chromium is not installed."""
    import shutil
    import subprocess
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    _, run = es_run
    assert invoke("report", run).exit_code == 0
    page = run / "report" / "report.html"
    p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                        "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "<h1>cvflow report" in p.stdout
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console


def test_progress_without_a_terminal_has_no_control_characters(tmp_path, x_cv):
    """A batch job's log: plain lines, no ANSI escapes, carriage returns or other controls."""
    import subprocess
    import sys
    from conftest import ES_CONFIG
    cmd = [sys.executable, "-m", "cvflow.cli", "sample", str(ES_CONFIG), "--cv", str(x_cv), "--steps", "20000",
           "--grid=-2,2,40", "--out", str(tmp_path / "run")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    assert "ns/day" in text and "step 20,000/20,000" in text  # the progress lines are there
    bad = sorted({hex(ord(c)) for c in text if ord(c) < 32 and c not in "\n\t"})
    assert bad == [], bad


def test_status_and_report_count_the_frames_of_an_unfinished_md_stage(tmp_path):
    """An iteration whose MD was stopped (or is under way) shows the frames its chunks hold,
    its walkers' too, not "-"; the last good frames kept after a blow-up are not counted twice."""
    import json
    run = tmp_path / "run"
    for chunks, sizes in ((run / "iter_000" / "md" / "chunks", (4, 3)),
                          (run / "iter_000" / "md" / "walkers" / "w01" / "chunks", (5,))):
        chunks.mkdir(parents=True)
        for k, n in enumerate(sizes):
            np.save(chunks / f"steps_{1000 * k:012d}.npy", np.arange(n))
            np.save(chunks / f"frames_{1000 * k:012d}.npy", np.zeros((n, 2, 3)))
    np.save(run / "iter_000" / "md" / "chunks" / "goodsteps_000000001000.npy", np.arange(2))
    (run / "manifest.json").write_text(json.dumps({"stages": {}, "current": "iter_000/md"}))
    res = invoke("status", run)
    assert res.exit_code == 0, res.output
    assert re.search(r"\|\s+0 \|\s+12 so far \|", res.output), res.output
    res = invoke("report", run)  # without the run's config: one line that names the file
    assert res.exit_code == 2 and "no config.resolved.yaml" in res.output and "Traceback" not in res.output
    from cvflow.config import dump_config, load_config
    from conftest import ES_CONFIG
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({"config": dump_config(load_config(ES_CONFIG))}))
    res = invoke("report", run)  # the report's table says what status says
    assert res.exit_code == 0, res.output
    assert "<td>0</td><td>12 so far</td>" in (run / "report" / "report.html").read_text()


def test_eta_reads_as_a_duration():
    """The progress lines' ETA in the unit a person reads: seconds under 90 s, then minutes,
    hours and minutes, days and hours (a solvated protein on a CPU: 1 d 21 h, not
    160,489 s), rounded without "60 min" or "24 h" carries."""
    from cvflow.progress import eta_text
    want = {0: "0 s", 89: "89 s", 100: "2 min", 3569: "59 min", 3599: "1 h 00 min", 3631: "1 h 01 min",
            7199: "2 h 00 min", 86369: "23 h 59 min", 86399: "1 d 0 h", 160489: "1 d 21 h"}
    for seconds, text in want.items():
        assert eta_text(seconds * 250.0, 250.0) == "ETA " + text, seconds
    assert eta_text(100, 0.0) == "ETA -"


def test_verbosity_before_or_after_the_command(tmp_path):
    from conftest import ES_CONFIG
    for argv in (["-q", "validate", str(ES_CONFIG)], ["validate", "-q", str(ES_CONFIG)],
                 ["-v", "validate", str(ES_CONFIG)]):
        res = CliRunner().invoke(main, argv)
        assert res.exit_code == 0 and "OK" in res.output, (argv, res.output)


def test_status_tells_a_live_run_from_a_dead_one(tmp_path):
    import json
    import os
    import socket
    import time
    from cvflow import artifacts as art
    run = tmp_path / "run"
    run.mkdir()
    assert art.liveness(run) is None
    with art.Heartbeat(run, interval=0.1):
        assert art.liveness(run).startswith("running (pid")
    assert not (run / "heartbeat.json").exists()  # removed on a clean exit
    dead = 2**22 + 12345  # above any pid_max default: no such process
    (run / "heartbeat.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead,
                                                    "time": time.time() - 600, "interval_seconds": 30}))
    assert art.liveness(run).startswith("killed")
    (run / "heartbeat.json").write_text(json.dumps({"host": "elsewhere", "pid": os.getpid(),
                                                    "time": time.time() - 3600, "interval_seconds": 30}))
    assert art.liveness(run).startswith("stopped or killed on elsewhere")


def test_sample_takes_a_1d_bias_grid_for_a_1d_cv(tmp_path, x_cv):
    """`cvflow sample` has no learned CV: a 1-D bias.grid goes with a 1-D --cv, whatever
    model.bottleneck says (2 here); the loop still requires the match."""
    from conftest import write_es_config
    cfg = write_es_config(tmp_path / "es.yaml", tmp_path / "loop",
                          {"bias": {"grid": [{"min": -1.6, "max": 1.2, "bins": 56}]}, "model": {"bottleneck": 2}})
    res = CliRunner().invoke(main, ["sample", str(cfg), "--cv", str(x_cv), "--steps", "2000",
                                    "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    from cvflow.fes import read_fes
    c, _, _ = read_fes(tmp_path / "s" / "fes.csv")
    assert c.shape == (56, 1) and abs(c[0, 0] - (-1.6 + 0.025)) < 1e-9
    for argv in (["validate", str(cfg)], ["run", str(cfg)]):
        res = CliRunner().invoke(main, argv)
        assert res.exit_code == 2 and "model.bottleneck = 2" in res.output, (argv, res.output)
    # a 2-D CV with the 1-D grid: named in one line
    two = tmp_path / "xy.pt"
    from conftest import linear_toy_cv
    linear_toy_cv(two, [[1.0, 0.0], [0.0, 1.0]])
    res = CliRunner().invoke(main, ["sample", str(cfg), "--cv", str(two), "--steps", "100",
                                    "--out", str(tmp_path / "s2")])
    assert res.exit_code == 2 and "bias.grid has 1 dimension(s)" in res.output, res.output


def test_toy_particle_stays_in_the_plane(tmp_path, es_config, x_cv):
    """The toy's z is held at 0 with ω Δt = 1: its thermal spread is √(kT/m) Δt (0.0032 nm
    for the entropic switch: kT = 0.25 kJ/mol, 1 amu, 20 fs). Before, a weak 0.5 z² let
    z wander by several nm in a run. x and y do not see z."""
    from cvflow.sampler import load_frames, run_segment
    from cvflow.system import build_system
    from cvflow.units import kT
    cfg = es_config.model_copy(deep=True)
    bundle = build_system(cfg.system)
    run_segment(cfg, bundle, tmp_path / "run", 20_000, seed=3, engine="none")
    z = load_frames(tmp_path / "run", bundle)[:, 0, 2]
    sigma = np.sqrt(kT(cfg.md.temperature) / 1.0) * cfg.md.timestep
    print(f"z: std {z.std():.2e} nm, max |z| {np.abs(z).max():.2e} nm, expected std {sigma:.2e}")
    assert np.abs(z).max() < 6 * sigma
    assert 0.5 * sigma < z.std() < 2 * sigma  # thermal, not frozen
