"""Bias engines, one module each, behind one small interface.

An engine object provides ``make_force()`` (an OpenMM Force to add to the System),
``take_colvar()`` (rows ``step, ξ…, λ…`` since the last call), ``czar()`` (additive
:class:`~cvflow.fes.CZARStats`), ``state_arrays()``/``load_state_arrays()`` (its part of
a checkpoint), ``dim``, ``name``, ``error`` (a message once a blow-up was seen) and
``stride`` (MD steps per bias evaluation; the MD loop steps by it, see
:func:`cvflow.sampler.advance`).
"""


def resolve_engine(name: str, walkers: int = 1, stride: int = 1) -> str:
    """``auto`` → ``plumed`` when a PLUMED kernel with DRR and PyTorch is usable, else ``native``;
    with several walkers, ``native`` (only its CZAR statistics merge exactly), and with a
    ``bias.stride`` above 1, ``native`` (the only engine that applies it).

    ``plumed`` without a usable kernel is a :class:`~cvflow.config.ConfigError` that says
    what is missing and how to install it; it is raised before any MD runs.
    """
    if name in ("native", "none"):
        return name
    if name == "auto" and (walkers > 1 or stride > 1):
        return "native"
    from .plumed import plumed_status
    status = plumed_status()
    if name == "plumed":
        if not status.usable:
            from ..config import ConfigError
            raise ConfigError(f"bias.engine: plumed is not usable: {status.reason}. "
                              "Build a kernel with scripts/install-plumed.sh (about 20 minutes on 2 cores) "
                              "and export PLUMED_KERNEL as it prints")
        return "plumed"
    return "plumed" if status.usable else "native"
