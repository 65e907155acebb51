"""Bias engines, one module each, behind one small interface.

An engine object provides ``make_force()`` (an OpenMM Force to add to the System),
``take_colvar()`` (rows ``step, ξ…, λ…`` since the last call), ``czar()`` (additive
:class:`~cvflow.fes.CZARStats`), ``state_arrays()``/``load_state_arrays()`` (its part of
a checkpoint), ``dim``, ``name`` and ``error`` (a message once a blow-up was seen).
"""
