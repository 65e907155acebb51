"""How the measurement scripts end: main's status, or one line when a `cvflow` subprocess
they started refused (cvflow has already printed its own one-line error) or a config they
read is bad (exit status 2, as cvflow's own); and the scratch directories they remove then."""
from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cvflow.config import ConfigError


def run_main(main, script: str) -> None:
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        print(f"{Path(script).name}: stopped: {' '.join(map(str, e.cmd[2:5]))} ... exited with status "
              f"{e.returncode}", file=sys.stderr)
        sys.exit(1)
    except ConfigError as e:
        print(f"{Path(script).name}: {e}", file=sys.stderr)
        sys.exit(2)


def scratch_dir(prefix: str) -> Path:
    """A new temporary directory (under $TMPDIR) that is removed when the script exits."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d
