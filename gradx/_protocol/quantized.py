"""Blockwise int8 moments: bitsandbytes' dynamic maps, 256 elements per block, one scale each.

A moment leaf of n ≥ 256 elements is stored as int8 codes (the leaf's shape) and float32
scales, one per block of 256 consecutive elements of the flattened leaf: the block's absmax.
An element x of a block with absmax s is stored as the code of the map value nearest to
x·(1/s) (bitsandbytes multiplies by the reciprocal too), and read back as map[code]·s.
First moments (any sign) use the *signed* map, second moments (|g|², sums of squares,
infinity norms: never negative) the *unsigned* one.

The maps are bitsandbytes' dynamic ("dynamic tree") maps, ``create_dynamic_map(signed)`` with
7 exponent bits, which torchao's 8-bit optimizers use as well: per decade 10⁻⁷…10⁰ of the
block's absmax, a linear grid of 2ⁱ (signed) or 2ⁱ⁺¹ (unsigned) values, plus 0 and 1. A
second moment 10⁻³ times its block's largest is stored to within 11% (10⁻⁵: 28%), where a
linear map would round everything below 1/510 of the absmax to 0 and, divided into ε, blow
the step up. Any element reads back within 0.71% of its block's absmax (1.06% between −1
and −0.979 of it, below). The nearest map
value is found with a table over the float32's upper 16 bits and one comparison
(:func:`nearest_index`): the same index as a binary search, cheap to compile and run.

The unsigned map differs from bitsandbytes' in one entry: its 0 is replaced by half its
smallest positive value, 1.625·10⁻⁷ (:func:`unsigned_map`). With a 0 in the map, every
second moment below 1.6·10⁻⁷ of its block's absmax was stored as 0 while its first moment,
on its own block scale, was not, and Adam's next step there was lr·m̂/ε (thousands of lr).
This is the "zero-point problem" of quantised second moments, and excluding 0 from their map
is the fix of Li et al. 2023, *Memory Efficient Optimizers with 4-bit States* (NeurIPS; their
"DE-0" map). Now a second moment decodes to 0 only when its whole block is 0 (scale 0); a
tiny one is overestimated, which can only shrink that coordinate's step.

The signed map (first moments, whose 0 is harmless: it is in the numerator) differs from
bitsandbytes' in one entry too: bitsandbytes' has 1 but not −1 (its most negative value is
−0.99297), so a block whose largest element is negative stored it 0.7% short at every step,
and a slow average drifted: SGD with momentum 0.99 and gradients +1, −1, … on one
coordinate stepped −0.63, +0.37 for ever where float32 steps −0.50, +0.50. gradx's has −1 in
that place (:func:`signed_map`), so a block's largest element is stored exactly whatever
its sign.

Layout (what the state holds per leaf):

* ``codes``: int8, the leaf's shape (a code is the map index minus 128);
* ``scales``: float32. When the leaf's last axis is a multiple of 256, a block never crosses
  a row, and ``scales`` has the leaf's shape with its last axis divided by 256, so it can
  be sharded like the leaf. Otherwise it is 1-D, one scale per block of the flattened
  leaf; the last block is padded with zeros to 256 elements for the computation (padding is
  never stored, and zeros change no absmax).

Leaves smaller than one block are stored in float32 by the caller (:mod:`storage`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

#: Elements per block (bitsandbytes' and torchao's blockwise 8-bit optimizers).
BLOCK = 256


class SignedInt8Moment(NamedTuple):
    """A moment of any sign (m, a velocity), stored by ``state_dtype="int8"``: blocks of 256
    elements of the flattened leaf, each element the int8 code of the nearest value of
    bitsandbytes' signed dynamic map (with −1 for its −0.99297) times its block's absmax.
    Read it with :func:`gradx.decode_moments`."""

    codes: jax.Array  # shape=the param's, int8: the index of the nearest map value, minus 128
    scales: jax.Array  # shape=(blocks,) or the param's with last axis / 256, float32: absmax


class UnsignedInt8Moment(NamedTuple):
    """A moment that is never negative (v, a sum of squares, an infinity norm), stored by
    ``state_dtype="int8"`` as :class:`SignedInt8Moment` is, with bitsandbytes' unsigned
    dynamic map less its 0 (a nonzero block never decodes to 0: the zero-point fix of Li et
    al. 2023). Read it with :func:`gradx.decode_moments`."""

    codes: jax.Array  # shape=the param's, int8: the index of the nearest map value, minus 128
    scales: jax.Array  # shape=(blocks,) or the param's with last axis / 256, float32: absmax


QUANTIZED = (SignedInt8Moment, UnsignedInt8Moment)


def is_quantized(node: Any) -> bool:
    return isinstance(node, QUANTIZED)


def dynamic_map(signed: bool) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)``: 256
    sorted float32 values in [-1, 1] (signed) or [0, 1] (unsigned), 0 and 1 included. The
    signed one is gradx's map for first moments; the unsigned one is stored without its 0
    (:func:`unsigned_map`).

    Written from bitsandbytes' definition; computed in float64 and rounded once to float32
    (bitsandbytes builds it in float32, so a value may differ in its last bit)."""
    data: list[float] = []
    for i in range(7):  # the decade 10^(i-7) .. 10^(i-6) of the absmax
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        boundaries = np.linspace(0.1, 1.0, items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += list(10.0 ** (i - 6) * means)
        if signed:
            data += list(-(10.0 ** (i - 6)) * means)
    data += [0.0, 1.0]
    out = np.sort(np.asarray(data, np.float32))
    assert out.shape == (256,) and np.all(np.diff(out) > 0)
    return out


def unsigned_map() -> np.ndarray:
    """The map of moments that are never negative: :func:`dynamic_map` ``(False)`` with its 0
    replaced by half its smallest positive value (3.25·10⁻⁷ / 2), so that no second moment
    decodes to 0 unless its block's scale is 0 (the "DE-0" map of Li et al. 2023).

    Half, because the map stays 256 strictly increasing values (one code per value, the
    nearest-value table unchanged), and an element of [0, 3.25·10⁻⁷] of the absmax still
    reads back within 1.625·10⁻⁷ of the absmax, the bound that bitsandbytes' 0 gave there;
    dropping the 0 instead would leave a code unused and put the floor at 3.25·10⁻⁷. What
    it changes: x below 2.44·10⁻⁷ of the absmax reads back as 1.625·10⁻⁷ (not 0 below
    1.625·10⁻⁷): an overestimated v, so a smaller step, never a larger one."""
    out = dynamic_map(False)
    out[0] = out[1] / np.float32(2)
    assert out.shape == (256,) and np.all(np.diff(out) > 0) and out[0] > 0
    return out


def signed_map() -> np.ndarray:
    """The map of first moments: :func:`dynamic_map` ``(True)`` with its most negative value,
    −0.99297, replaced by −1, so that a block's largest element is stored exactly whether it
    is positive or negative (bitsandbytes' map has 1 but not −1).

    Replaced rather than added (the map has 256 values): elements of [−1, −0.979] of the
    absmax read back within 1.06% of it instead of 0.71%, and every other code means what it
    did, so a state stored before the change reads back as it was but for that one code."""
    out = dynamic_map(True)
    out[0] = np.float32(-1)
    assert out.shape == (256,) and np.all(np.diff(out) > 0) and out[0] == -out[-1]
    return out


MAPS = {True: signed_map(), False: unsigned_map()}
# The midpoints between neighbouring map values: the number of midpoints below x/s is the
# index of the nearest value (a tie goes to the lower one).
MIDPOINTS = {s: ((m[:-1] + m[1:]) / np.float32(2)).astype(np.float32) for s, m in MAPS.items()}


def _bucket_table(midpoints: np.ndarray) -> np.ndarray:
    """For each of the 2¹⁶ values of a float32's upper 16 bits (its bfloat16 bucket), the
    number of midpoints below the bucket's lowest value.

    The nearest index is then that count, plus 1 if the next midpoint is below x: no bucket
    of [-1, 1] holds two midpoints (checked here), so one comparison finds what a binary
    search over the 255 midpoints would, at a fraction of its cost to compile and run."""
    upper = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    ends = upper.view(np.float32), (upper | np.uint32(0xFFFF)).view(np.float32)
    low, high = np.minimum(*ends), np.maximum(*ends)
    count_low = np.searchsorted(midpoints, low, "left")
    count_high = np.searchsorted(midpoints, high, "left")
    inside = np.isfinite(low) & np.isfinite(high) & (np.abs(low) <= 1) & (np.abs(high) <= 1)
    assert np.all((count_high - count_low)[inside] <= 1)
    return np.minimum(count_low, 254).astype(np.uint8)


BUCKETS = {s: _bucket_table(m) for s, m in MIDPOINTS.items()}
# The midpoints with +inf after them, so that count + 1 is always an index.
PADDED = {s: np.append(m, np.float32(np.inf)).astype(np.float32) for s, m in MIDPOINTS.items()}


def _lookup(table: np.ndarray, index: jax.Array) -> jax.Array:
    """``table[index]``, placed like ``index``: with explicit mesh axes a gather must be told
    its output's sharding (outside ``jax.set_mesh`` it cannot infer it)."""
    # every index is in range by construction: no clamping or wrapping of negatives
    sharding = jax.typeof(index).sharding
    return jnp.asarray(table).at[index].get(mode="promise_in_bounds", out_sharding=sharding)


def nearest_index(x: jax.Array, signed: bool) -> jax.Array:
    """The index (int32, 0..255) of the map value nearest to each element of ``x`` (float32,
    in [-1, 1]); a tie goes to the lower value."""
    bucket = jax.lax.shift_right_logical(
        jax.lax.bitcast_convert_type(x, jnp.uint32), jnp.uint32(16)
    )
    base = _lookup(BUCKETS[signed], bucket).astype(jnp.int32)
    above = _lookup(PADDED[signed], base) < x
    return base + above.astype(jnp.int32)


def scales_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the scales of a leaf of ``shape`` (see the module's docstring)."""
    if shape and shape[-1] % BLOCK == 0:
        return (*shape[:-1], shape[-1] // BLOCK)
    return (-(-int(np.prod(shape, dtype=np.int64)) // BLOCK),)


def _blocks(x: jax.Array) -> jax.Array:
    """``x`` as (..., 256) blocks: its last axis split, or flattened and zero-padded."""
    if x.ndim and x.shape[-1] % BLOCK == 0:
        return x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    flat = x.reshape(-1)
    pad = -flat.shape[0] % BLOCK
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros(pad, flat.dtype)])
    return flat.reshape(-1, BLOCK)


def _per_element(scales: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Each element's block scale, in the leaf's ``shape``. The codes are then computed (and
    read) elementwise in the leaf's shape, so that under ``jit`` on a mesh they follow the
    leaf's sharding; only the absmax reduction sees the blocks.

    Scales of the 1-D layout with more than one axis are a stack of leaves (a sweep's
    states, ``jax.vmap(opt.init)``): their leading axes are the stack's, each leaf's blocks
    its own."""
    # a broadcast and a reshape (jnp.repeat with total_repeat_length is a scatter and a
    # cumulative sum over every element: 16x the step's time on a 16M leaf)
    expanded = jnp.broadcast_to(scales[..., None], (*scales.shape, BLOCK))
    if shape and shape[-1] % BLOCK == 0:
        return expanded.reshape(shape)
    stack = scales.shape[:-1]
    size = int(np.prod(shape[len(stack) :], dtype=np.int64))
    expanded = expanded.reshape(*stack, -1)
    if expanded.shape[-1] != size:
        expanded = expanded[..., :size]
    return expanded.reshape(shape)


def explicit_sharding(x: jax.Array) -> NamedSharding | None:
    """``x``'s sharding where it has explicit mesh axes (``AxisType.Explicit``), else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    return sharding


def quantize(x: jax.Array, signed: bool) -> SignedInt8Moment | UnsignedInt8Moment:
    """``x`` (any real float dtype; computed in float32) quantised blockwise with the map.

    A block of zeros has scale 0 (and reads back as zeros). A non-finite element makes its
    whole block non-finite: the moment was lost anyway. With explicit mesh axes the blocks
    are computed with the axes made automatic (``auto_axes``), the codes placed like ``x``
    and the scales as :func:`scales_sharding` says."""
    x = jnp.asarray(x).astype(jnp.float32)
    sharding = explicit_sharding(x)
    if sharding is None:
        return _quantize(x, signed)
    cls = SignedInt8Moment if signed else UnsignedInt8Moment
    out = cls(codes=sharding, scales=scales_sharding(sharding, x.shape))
    return jax.sharding.auto_axes(lambda v: _quantize(v, signed), out_sharding=out)(x)


def quantized_full(like: jax.Array, fill: Any, signed: bool) -> Any:
    """``quantize(jnp.full_like(like, fill), signed)``, built without quantising: every scale
    ``|fill|`` and every code that of 0, 1 or -1 (cheap at ``init``: no program to compile
    per leaf shape). Placed as :func:`quantize` places them, also with explicit mesh axes.
    A fill of 0 takes the code of the map value nearest 0 (the unsigned map's smallest,
    1.625·10⁻⁷, which has no 0) and scale 0, so it reads back as 0, as quantising zeros does."""
    fill = jnp.asarray(fill).astype(jnp.float32)
    zero, one, minus = (int(np.searchsorted(MIDPOINTS[signed], v)) - 128 for v in (0, 1, -1))
    code = jnp.where(fill == 0, zero, jnp.where(fill > 0, one, minus)).astype(jnp.int8)
    codes = jnp.full_like(like, code, dtype=jnp.int8)
    scales = jnp.full(scales_shape(tuple(like.shape)), jnp.abs(fill), jnp.float32)
    sharding = explicit_sharding(like)
    if sharding is not None:
        if isinstance(like, jax.core.Tracer):  # jit: the abstract mesh of jax.set_mesh
            scales = jax.sharding.reshard(scales, scales_sharding(sharding, like.shape))
        else:  # eager: the concrete mesh of the array
            scales = jax.device_put(scales, scales_sharding(like.sharding, like.shape))
    return (SignedInt8Moment if signed else UnsignedInt8Moment)(codes=codes, scales=scales)


def dequantize(q: SignedInt8Moment | UnsignedInt8Moment) -> jax.Array:
    """The float32 values ``q`` stands for: map[code]·scale of its block (placed like the
    codes, also with explicit mesh axes)."""
    sharding = explicit_sharding(q.codes)
    if sharding is None:
        return _dequantize(q)
    return jax.sharding.auto_axes(_dequantize, out_sharding=sharding)(q)


def _absmax(blocks: jax.Array, signed: bool) -> jax.Array:
    """max |x| over the last axis, as max(max x, −min x) (max x for a moment that is never
    negative): reductions that read ``blocks`` as they are (on CPU, ``max(abs(x))`` made
    XLA write |x| out first, at 5x the time)."""
    top = jnp.max(blocks, axis=-1)
    return jnp.maximum(top, -jnp.min(blocks, axis=-1)) if signed else top


# jitted: an eager init quantises each leaf in one program, not one per operation
@functools.partial(jax.jit, static_argnums=1)
def _quantize(x: jax.Array, signed: bool) -> SignedInt8Moment | UnsignedInt8Moment:
    scales = _absmax(_blocks(x), signed)
    # 1/s of an absmax above 2^126 is below float32's smallest normal, and XLA flushes it to
    # 0: such a block (absmax above 2^120) is scaled by 2^-8 first, exactly (a power of two)
    pre = jnp.where(scales > 2.0**120, jnp.float32(2.0**-8), jnp.float32(1))
    inverse = 1 / jnp.where(scales > 0, scales * pre, jnp.ones_like(scales))
    x = x * _per_element(pre, x.shape)
    index = nearest_index(x * _per_element(inverse, x.shape), signed)
    codes = (index - 128).astype(jnp.int8)
    return (SignedInt8Moment if signed else UnsignedInt8Moment)(codes=codes, scales=scales)


@jax.jit
def _dequantize(q: SignedInt8Moment | UnsignedInt8Moment) -> jax.Array:
    values = _lookup(MAPS[isinstance(q, SignedInt8Moment)], q.codes.astype(jnp.int32) + 128)
    return values * _per_element(q.scales, q.codes.shape)


def _axis_size(mesh: Any, axes: Any) -> int:
    names = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([mesh.shape[a] for a in names if a is not None], dtype=np.int64))


def scales_sharding(codes: NamedSharding | None, shape: tuple[int, ...]) -> NamedSharding | None:
    """The sharding of the scales of a leaf of ``shape`` whose codes are placed with ``codes``.

    The scales shard with their blocks where a block never straddles two shards: the leaf's
    own spec when its last axis holds whole blocks (the last axis's share dropped where a
    shard's width is not a multiple of 256), and, for 1-D scales, the first axis's share
    when only the first axis is split and each shard is whole blocks. Else they are
    replicated (4 bytes per 256 elements): the update is still right, since ``jit`` works
    on the whole array, at the cost of gathering the blocks that cross shards.
    """
    if codes is None:
        return None
    mesh = codes.mesh
    spec = tuple(codes.spec) + (None,) * (len(shape) - len(codes.spec))
    if shape and shape[-1] % BLOCK == 0:
        last = spec[-1]
        if last is not None and (shape[-1] // BLOCK) % _axis_size(mesh, last):
            last = None
        return NamedSharding(mesh, P(*spec[:-1], last))
    size = int(np.prod(shape, dtype=np.int64))
    first = spec[0] if spec else None
    n = _axis_size(mesh, first)
    whole = size % n == 0 and (size // n) % BLOCK == 0
    if first is not None and all(s is None for s in spec[1:]) and whole:
        return NamedSharding(mesh, P(first))
    return NamedSharding(mesh, P())
