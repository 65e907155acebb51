"""The same CV gives the same bits whether numba compiles its kernels in this process or
loads them from its cache (a last-bit difference becomes another MD trajectory)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import random_neural_cv

SCRIPT = """
import json, sys
import numpy as np
from cvflow.fastcv import load_cv
from cvflow.cvstats import gradient_stats
rng = np.random.default_rng(0)
pos = np.asarray({pos}) + 0.02 * rng.standard_normal((200, {n}, 3))
cv = load_cv(sys.argv[1], {n})
print(json.dumps({{k: repr(v) for k, v in gradient_stats(cv, pos).items()}}))
"""


def test_compiled_and_cached_kernels_agree_to_the_bit(tmp_path, ala2_bundle):
    path = random_neural_cv(tmp_path / "cv.pt", ala2_bundle)
    code = SCRIPT.format(pos=ala2_bundle.positions.tolist(), n=ala2_bundle.n_atoms)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    runs = [subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1] for _ in range(2)]
    assert any((tmp_path / "numba").rglob("*.nbi"))          # the second run loaded the cache
    assert json.loads(runs[0]) == json.loads(runs[1])        # repr of each float: every bit
