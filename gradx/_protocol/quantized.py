"""Blockwise 8-bit moments: 8-bit floating-point codes, 256 elements per block, one absmax each.

A moment leaf of n ≥ 256 elements is stored as int8 codes (the leaf's shape) and float32
absmaxes, one per block of 256 consecutive elements of the flattened leaf: the block's largest
|x|. An element x of a block with absmax s is stored as the code of the map value nearest to
|x|·(1/s) (with x's sign for a signed map), and read back as map[code]·s; the block's largest
element is stored exactly, whatever its sign. First moments (any sign) use the *signed* map,
second moments (|g|², sums of squares, infinity norms: never negative) the *unsigned* one.

The maps are floating-point numbers with 3 mantissa bits, so that a code is computed from a
float32's bits with a shift and an add, and read back the same way (:func:`encode`,
:func:`decode`): no table, no lookup, a few vector instructions per element. On a CPU,
bitsandbytes' dynamic maps (a 256-entry table, searched to encode) made the int8 Adam step
5-7× the float32 step under XLA, and 5× in a fused C kernel: their lookups do not vectorise.

* **Signed** (first moments): a sign, 0, and 127 magnitudes 2ᵉ·(1 + f/8) for e = −16…−1
  (f = 2…7 at e = −16) and 1: sixteen octaves below the absmax. An element below
  1.1875·2⁻¹⁶ of its absmax is stored as 0 (harmless in a numerator).
* **Unsigned** (second moments): 255 magnitudes 2ᵉ·(1 + f/8) for e = −32…−1 (f = 2…7 at
  e = −32) and 1, the sign bit spent on sixteen more octaves. There is no 0: an element
  below 1.25·2⁻³² of its absmax reads back as 1.25·2⁻³² of it, so a second moment decodes
  to 0 only when its whole block is 0 (absmax 0). A 0 in that map is the "zero-point
  problem" of quantised second moments (Li et al. 2023, *Memory Efficient Optimizers with
  4-bit States*, NeurIPS): a v read as 0 under an m that is not makes Adam's step lr·m̂/ε.

A nonzero element within the maps' range reads back within 1/16 (6.25%) of itself (the grid
is 1/8 of an octave); bitsandbytes' dynamic maps: 0.35% to 7% in the top decade, up to 50%
in the lower ones.

**One pass for the absmax.** The absmax is a reduction over the *new* moment, which XLA's
CPU backend otherwise runs over a float32 copy of it, written out and read back (64 MiB per
moment of a 16M leaf, its pages faulted in at every step). A block whose update is
``new = a·old + b·x`` (an EMA, a sum of squares, a momentum buffer) says so, and the absmax
is then computed from the old codes and ``x`` in blocks (:func:`affine_absmax`): XLA fuses
that into one reduction over its inputs, and the new moment is never written out in float32.
The result is the absmax of the same numbers (up to the last bit of a fused multiply-add,
hence the clip to 1 in :func:`encode`). A block whose update has no such form takes the
absmax of the new moment as it is.

**Read as stored.** The block's update reads the new moment back from its codes
(:func:`dequantize` of what is stored), as gradx's bfloat16 states are read, not the float32
moment it computed (which bitsandbytes' 8-bit optimizers use). The step then reads the old
codes once, to write the new ones in place, and the update reads the new ones: XLA need not
copy the old codes (1 byte per element per moment) to keep them for the update. The codes
come out of an integer remainder that is the identity on them (:func:`encode`'s last step):
XLA counts an integer remainder as expensive and does not recompute the codes inside the
update, which would read, and copy, the old codes again.

Layout (what the state holds per leaf):

* ``codes``: int8, the leaf's shape, in −127…127: the signed magnitude index with its sign,
  or the unsigned index minus 128;
* ``absmax``: float32. When the leaf's last axis is a multiple of 256, a block never crosses
  a row, and ``absmax`` has the leaf's shape with its last axis divided by 256, so it can be
  sharded like the leaf. Otherwise it is 1-D, one absmax per block of the flattened leaf;
  the last block is padded with zeros to 256 elements for the computation (padding is never
  stored, and zeros change no absmax).

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

from gradx._protocol.dtypes import coef, wide

#: Elements per block (bitsandbytes' and torchao's blockwise 8-bit optimizers).
BLOCK = 256


class SignedFloat8Moment(NamedTuple):
    """A moment of any sign (m, a velocity), stored by ``state_dtype="int8"``: blocks of 256
    elements of the flattened leaf, each element the int8 code of the nearest value of the
    signed 8-bit floating-point map (a sign, 0 and 2ᵉ·(1 + f/8) for e = −16…−1, and 1) times
    its block's absmax. Read it with :func:`gradx.decode_moments`."""

    # fields in sorted order, as every gradx state's (an orbax restore without a target
    # returns dicts with sorted keys)
    absmax: jax.Array  # shape=(blocks,) or the param's with last axis / 256, float32
    codes: jax.Array  # shape=the param's, int8 in -127..127: ±(magnitude index)


class UnsignedFloat8Moment(NamedTuple):
    """A moment that is never negative (v, a sum of squares, an infinity norm), stored by
    ``state_dtype="int8"`` as :class:`SignedFloat8Moment` is, with the unsigned map
    2ᵉ·(1 + f/8) for e = −32…−1, and 1: no 0, so a nonzero block never decodes to 0 (the
    zero-point fix of Li et al. 2023). Read it with :func:`gradx.decode_moments`."""

    # fields in sorted order, as every gradx state's (an orbax restore without a target
    # returns dicts with sorted keys)
    absmax: jax.Array  # shape=(blocks,) or the param's with last axis / 256, float32
    codes: jax.Array  # shape=the param's, int8 in -127..127: the map index (1..255) minus 128


QUANTIZED = (SignedFloat8Moment, UnsignedFloat8Moment)


def is_quantized(node: Any) -> bool:
    return isinstance(node, QUANTIZED)


# A float32 y in (0, 1] has bits 0 EEEEEEEE MMM…: (bits + 2¹⁹) >> 20 is 8·E + the first three
# mantissa bits, rounded to nearest (a carry moves to the next octave). The index is that less
# an offset that puts 1.0 (8·127 = 1016) at the top index: 127 (signed) or 255 (unsigned).
_HALF = np.uint32(1 << 19)
_FULL = np.uint32((1 << 20) - 1)  # rounds up instead: the next grid value unless on one
_SHIFT = np.uint32(20)
_OFFSET = {True: 1016 - 127, False: 1016 - 255}
# The indices in use: 0 (the value 0) to 127 with a sign; 1 to 255 unsigned (index 0 would be
# code -128, which the identity remainder of encode() would not keep).
_LOW = {True: 0, False: 1}
_TOP = {True: 127, False: 255}


def map_values(signed: bool) -> np.ndarray:
    """The map's values in index order, float32: 128 magnitudes for the signed map (index 0
    is 0; the code of −x is minus that of x), 255 for the unsigned one (indices 1…255, code =
    index − 128). For tests and readers: :func:`encode` and :func:`decode` compute the same
    from bits."""
    index = np.arange(_LOW[signed], _TOP[signed] + 1, dtype=np.uint32)
    values = ((index + np.uint32(_OFFSET[signed])) << _SHIFT).view(np.float32).copy()
    if signed:
        values[0] = 0
    return values


def encode(y: jax.Array, signed: bool, up: bool = False) -> jax.Array:
    """The int8 code of each element of ``y`` (float32, |y| ≤ 1 or NaN; larger is clipped to
    1): the nearest map value (a tie away from 0), but for a signed |y| below 1.1875·2⁻¹⁶,
    stored as 0, and for an unsigned one below 1.25·2⁻³², stored as that smallest value.
    With ``up``, the smallest map value at least |y| instead (a running maximum stored so
    that it never reads back lower than it was).

    The codes are in −127…127, and the last operation is a remainder by −128, the identity
    there. XLA's CPU backend counts an integer remainder as expensive, so it does not
    recompute the codes inside each of their consumers (the update, which reads the moment
    back from them): it writes them once, and no copy of the old codes is kept for a
    consumer that would recompute them."""
    magnitude = jnp.minimum(jnp.abs(y), jnp.float32(1))
    bits = jax.lax.bitcast_convert_type(magnitude, jnp.uint32)
    carry = _FULL if up else _HALF
    index = jax.lax.shift_right_logical(bits + carry, _SHIFT).astype(jnp.int32)
    index = jnp.clip(index - _OFFSET[signed], _LOW[signed], _TOP[signed])
    codes = jnp.where(y < 0, -index, index) if signed else index - 128
    return jax.lax.rem(codes.astype(jnp.int8), jnp.int8(-128))


def decode(codes: jax.Array, signed: bool) -> jax.Array:
    """The map value (float32) of each int8 code: :func:`map_values`, computed from bits."""
    codes = codes.astype(jnp.int32)
    index = jnp.abs(codes) if signed else codes + 128
    bits = jax.lax.shift_left((index + _OFFSET[signed]).astype(jnp.uint32), _SHIFT)
    values = jax.lax.bitcast_convert_type(bits, jnp.float32)
    if not signed:
        return values
    values = jnp.where(index == 0, jnp.float32(0), values)
    return jnp.where(codes < 0, -values, values)


def absmax_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the absmax of a leaf of ``shape`` (see the module's docstring)."""
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
    """Each element's block value (its absmax, or any per-block value), in the leaf's
    ``shape``. The codes are then computed (and read) elementwise in the leaf's shape, so
    that under ``jit`` on a mesh they follow the leaf's sharding; only the absmax reduction
    sees the blocks.

    Values of the 1-D layout with more than one axis are a stack of leaves (a sweep's
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


def _auto(fn: Any, sharding: NamedSharding | None, out: Any, *args: Any) -> Any:
    """``fn(*args)``, under ``auto_axes`` (outputs placed as ``out``) where ``sharding`` has
    explicit mesh axes: the blocks' reshapes need the axes made automatic."""
    if sharding is None:
        return fn(*args)
    return jax.sharding.auto_axes(fn, out_sharding=out)(*args)


def quantize(
    x: jax.Array, signed: bool, absmax: jax.Array | None = None, up: bool = False
) -> SignedFloat8Moment | UnsignedFloat8Moment:
    """``x`` (any real float dtype; computed in float32) quantised blockwise with the map,
    each block with its absmax, taken from ``x`` or given as ``absmax`` (one per block: that
    of the same numbers, from :func:`affine_absmax`); ``up``: each element rounded up to a
    map value (:func:`encode`), not to the nearest.

    A block of zeros has absmax 0 (and reads back as zeros). A non-finite element makes its
    whole block non-finite: the moment was lost anyway. With explicit mesh axes the blocks
    are computed with the axes made automatic (``auto_axes``), the codes placed like ``x``
    and the absmax as :func:`absmax_sharding` says."""
    x = jnp.asarray(x).astype(jnp.float32)
    sharding = explicit_sharding(x)
    cls = SignedFloat8Moment if signed else UnsignedFloat8Moment
    out = None
    if sharding is not None:
        out = cls(codes=sharding, absmax=absmax_sharding(sharding, x.shape))
    return _auto(lambda v, s: _quantize(v, s, signed, up), sharding, out, x, absmax)


def affine_absmax(
    old: SignedFloat8Moment | UnsignedFloat8Moment,
    a: jax.Array,
    b: jax.Array,
    term: jax.Array,
    square: bool = False,
) -> jax.Array:
    """The absmax per block of a moment updated as ``new = a·old + b·x`` (scalars a and b,
    elementwise, ``old`` decoded from its codes), with ``x = term`` or, with ``square``,
    ``x = term²``: computed in blocks from the old codes and ``term``, so that XLA fuses it
    into one reduction over them (see the module's docstring)."""
    term = jnp.asarray(term)
    sharding = explicit_sharding(old.codes)  # the codes mirror the param
    out = None if sharding is None else absmax_sharding(sharding, term.shape)
    signed = isinstance(old, SignedFloat8Moment)
    fn = functools.partial(_affine_absmax, square=square, signed=signed)
    return _auto(fn, sharding, out, old, jnp.asarray(a), jnp.asarray(b), term)


def _affine_absmax(
    old: Any, a: jax.Array, b: jax.Array, term: jax.Array, *, square: bool, signed: bool
) -> jax.Array:
    # in the precision the block computes in (``wide``: float64 for float64 params under
    # x64, where a term whose square overflows float32 can still give a new moment that
    # float32 holds), from the old moment as the block decodes it
    values = decode(_blocks(old.codes), signed) * old.absmax[..., None]
    x = wide(_blocks(term), a, b, values)
    values = wide(values, x)
    if square:
        x = x * x
    new = coef(a, values) * values + coef(b, x) * x
    if new.size != term.size:  # the last block's padding: its codes decode to a map value
        rows = jax.lax.broadcasted_iota(jnp.int32, new.shape, 0)
        cols = jax.lax.broadcasted_iota(jnp.int32, new.shape, 1)
        last = term.size - (new.shape[0] - 1) * BLOCK  # elements of the last block
        new = jnp.where((rows < new.shape[0] - 1) | (cols < last), new, 0)
    return _absmax(new).astype(jnp.float32)


def quantized_full(like: jax.Array, fill: Any, signed: bool) -> Any:
    """``quantize(jnp.full_like(like, fill), signed)``, built without quantising: every
    absmax ``|fill|`` and every code that of 0, 1 or -1 (cheap at ``init``: no program to
    compile per leaf shape). Placed as :func:`quantize` places them, also with explicit mesh
    axes. A fill of 0 takes the code of the map value nearest 0 (the unsigned map's
    smallest, 1.25·2⁻³², which is not 0) and absmax 0, so it reads back as 0, as quantising
    zeros does."""
    fill = jnp.asarray(fill).astype(jnp.float32)
    zero = 0 if signed else _LOW[False] - 128
    code = jnp.where(fill == 0, zero, jnp.where(fill > 0, 127, -127)).astype(jnp.int8)
    codes = jnp.full_like(like, code, dtype=jnp.int8)
    absmax = jnp.full(absmax_shape(tuple(like.shape)), jnp.abs(fill), jnp.float32)
    sharding = explicit_sharding(like)
    if sharding is not None:
        if isinstance(like, jax.core.Tracer):  # jit: the abstract mesh of jax.set_mesh
            absmax = jax.sharding.reshard(absmax, absmax_sharding(sharding, like.shape))
        else:  # eager: the concrete mesh of the array
            absmax = jax.device_put(absmax, absmax_sharding(like.sharding, like.shape))
    return (SignedFloat8Moment if signed else UnsignedFloat8Moment)(codes=codes, absmax=absmax)


def dequantize(q: SignedFloat8Moment | UnsignedFloat8Moment) -> jax.Array:
    """The float32 values ``q`` stands for: map[code]·absmax of its block (placed like the
    codes, also with explicit mesh axes)."""
    sharding = explicit_sharding(q.codes)
    return _auto(_dequantize, sharding, sharding, q)


def _absmax(blocks: jax.Array) -> jax.Array:
    """max |x| over the last axis, as max(max x, −min x) in one variadic reduction: XLA's CPU
    backend fuses the elementwise producer of ``blocks`` into it and reads the inputs once
    (a ``max(abs(x))``, or separate max and min, went to a library kernel that takes only a
    few kinds of producer, and XLA wrote ``blocks`` out first)."""
    init = (jnp.array(-jnp.inf, blocks.dtype), jnp.array(jnp.inf, blocks.dtype))
    top, bottom = jax.lax.reduce(
        (blocks, blocks),
        init,
        lambda x, y: (jnp.maximum(x[0], y[0]), jnp.minimum(x[1], y[1])),
        (blocks.ndim - 1,),
    )
    return jnp.maximum(top, -bottom)


# jitted: an eager init quantises each leaf in one program, not one per operation
@functools.partial(jax.jit, static_argnums=(2, 3))
def _quantize(
    x: jax.Array, absmax: jax.Array | None, signed: bool, up: bool
) -> SignedFloat8Moment | UnsignedFloat8Moment:
    if absmax is None:
        absmax = _absmax(_blocks(x))
    # 1/s of an absmax above 2^126 is below float32's smallest normal, and XLA flushes it to
    # 0: such a block (absmax above 2^120) is scaled by 2^-8 first, exactly (a power of two)
    pre = jnp.where(absmax > 2.0**120, jnp.float32(2.0**-8), jnp.float32(1))
    inverse = 1 / jnp.where(absmax > 0, absmax * pre, jnp.ones_like(absmax))
    x = x * _per_element(pre, x.shape)
    codes = encode(x * _per_element(inverse, x.shape), signed, up)
    return (SignedFloat8Moment if signed else UnsignedFloat8Moment)(codes=codes, absmax=absmax)


@jax.jit
def _dequantize(q: SignedFloat8Moment | UnsignedFloat8Moment) -> jax.Array:
    values = decode(q.codes, isinstance(q, SignedFloat8Moment))
    return values * _per_element(q.absmax, q.codes.shape)


def _axis_size(mesh: Any, axes: Any) -> int:
    names = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([mesh.shape[a] for a in names if a is not None], dtype=np.int64))


def absmax_sharding(codes: NamedSharding | None, shape: tuple[int, ...]) -> NamedSharding | None:
    """The sharding of the absmax of a leaf of ``shape`` whose codes are placed with ``codes``.

    The absmax shards with its blocks where a block never straddles two shards: the leaf's
    own spec when its last axis holds whole blocks (the last axis's share dropped where a
    shard's width is not a multiple of 256), and, for a 1-D absmax, the first axis's share
    when only the first axis is split and each shard is whole blocks. Else it is
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
