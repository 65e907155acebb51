"""The PLUMED engine (DRR eABF on a PYTORCH_MODEL CV): discovery of a usable kernel."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class PlumedStatus:
    usable: bool
    reason: str
    kernel: str | None = None
    version: str | None = None


def plumed_status() -> PlumedStatus:
    """Whether a PLUMED kernel with the DRR and PYTORCH modules can be used from Python."""
    kernel = os.environ.get("PLUMED_KERNEL")
    try:
        import plumed  # noqa: F401
    except ImportError:
        return PlumedStatus(False, "the Python package 'plumed' is not installed (pip install plumed)")
    if not kernel:
        return PlumedStatus(False, "no PLUMED kernel found (PLUMED_KERNEL is not set)")
    if not os.path.isfile(kernel):
        return PlumedStatus(False, f"PLUMED_KERNEL points to a missing file: {kernel}", kernel)
    return PlumedStatus(False, "the PLUMED engine is not implemented in this version of cvflow", kernel)


def plumed_version() -> str | None:
    st = plumed_status()
    return st.version


def make_plumed_bias(*args, **kwargs):
    raise NotImplementedError("the PLUMED engine is not available in this version of cvflow")
