"""How fit, sweep and search run an optimizer packed (:func:`gradx.flat`), or not."""

from __future__ import annotations

from gradx._tools import flat as _flat
from gradx._tools import flat_packing as _flat_packing
from gradx._training.inputs import check_flag


def start_optimizer(fn: str, flat, optimizer, params, opt_state, plan, diagnostics: bool):
    """``(packing, the optimizer to run, its starting state)`` for fit, its streamed path,
    sweep and search: ``optimizer`` packed (:func:`_packing`) when it is, and ``opt_state``
    (the user's, in the optimizer's own layout) packed for it, or its init."""
    if flat is not None:
        flat = check_flag(fn, "flat", flat)
    packing = _packing(fn, flat, optimizer, params, plan, diagnostics)
    if packing is not None:  # the same numbers, packed: see gradx.flat
        optimizer = packing.optimizer
        if opt_state is not None:
            opt_state = packing.pack(opt_state, fn)
    if opt_state is None:
        opt_state = optimizer.init(params)
    return packing, optimizer, opt_state


def _packing(fn: str, flat: bool | None, optimizer, params, plan, diagnostics: bool):
    """How fit (or sweep, or search) runs ``optimizer`` packed
    (:func:`gradx._tools.flat_packing.packing`), or None: with ``flat=None`` when it can and it pays
    off, never with ``flat=False``; ``flat=True`` raises where it cannot. ``plan``: the mesh plan
    (or mesh), None on one device."""
    if flat is False:
        return None
    if _flat.is_flat(optimizer):
        if diagnostics:
            raise ValueError(
                f"{fn}: diagnostics=True reads the optimizer leaf by leaf, got one packed by "
                "gradx.flat; pass the optimizer it wraps (fit packs it itself where it can) "
                "or diagnostics=False"
            )
        return None  # packed already: the user's layout is the packed one
    if plan is not None:
        why = "on a mesh each leaf keeps its own sharding: fit runs leaf by leaf"
    elif diagnostics:
        why = "diagnostics=True reads the state leaf by leaf"
    else:
        packing, why = _flat_packing.packing(optimizer, params)
        if packing is not None:
            return packing
    if flat:
        why = _flat_packing.why_not_elementwise(optimizer, params) or why
        raise ValueError(f"{fn}: flat=True cannot run this optimizer packed: {why}")
    return None
