"""How optimizer states store their moments: ``state_dtype=`` and ``stochastic_rounding=``.

Every optimizer and block with moments takes the keyword-only pair and builds, per moment, a
:class:`MomentCodec` with :func:`moment_codec`. A block then changes in three places only::

    codec = moment_codec("rms", "accumulator_dtype", accumulator_dtype, state_dtype,
                         stochastic_rounding, nonnegative=True)
    init:    nu = codec.init(params, "nu", fill=initial_scale)
    update:  v = codec.decode(state.nu)          # a tree like params, float
             ... compute the new v (float32 or wider) ...
             v, stored_v = codec.store(new_v, state.nu)   # as read, as stored
             RmsState(..., nu=stored_v)

A block whose moment is ``new = a·old + b·x`` (an EMA, a sum, a momentum buffer) says so,
``codec.store(new_v, state.nu, affine=(rho, 1 - rho, g, True))`` (x = g², ``True``: square
``g``), so that int8 blocks compute each block's absmax from the old codes and ``g``
(:func:`~gradx._protocol.quantized.affine_absmax`), which XLA fuses into one pass over them,
rather than from the new moment, which XLA would write out in float32 first; the other
storages ignore it.

The policies (``state_dtype``):

* ``None``: the moment follows the params' dtype (complex params keep a real second moment);
* a real float dtype (``"float32"``, ``jnp.bfloat16``, ...): the moment is stored in it,
  rounded to nearest;
* ``"bfloat16"`` with ``stochastic_rounding=True``: rounded stochastically from float32, so
  that E[stored] = value and small EMA increments are not rounded away. The stored moment
  is a :class:`RoundedMoment`: its PRNG key (one per moment, fixed at init) and a count of
  stores. Each store folds the count into the key (a hash, :func:`step_seed`); each
  element's 16 random bits are a hash of its index, the leaf's index and that seed
  (:func:`uniform_bits`). A run is reproducible and resumes exactly from a checkpoint;
* ``"int8"`` (or ``jnp.int8``): blockwise-quantised moments (see :mod:`quantized`): each leaf
  of at least 256 elements is a :class:`~gradx.SignedFloat8Moment` (first moments) or
  :class:`~gradx.UnsignedFloat8Moment` (second moments, never negative); smaller leaves stay
  float32. Real params only.

An explicit ``mu_dtype``/``nu_dtype``/``accumulator_dtype`` wins over ``state_dtype`` for its
moment. A block always computes in float32 (or wider) and encodes once per step.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradx._protocol.dtypes import (
    as_dtype,
    as_stored,
    dtype_arg,
    moment_dtype,
    moment_zeros,
    stored,
)
from gradx._protocol.quantized import (
    BLOCK,
    affine_absmax,
    dequantize,
    is_quantized,
    quantize,
    quantized_full,
)
from gradx._protocol.trees import unwrap_variables

BFLOAT16 = jnp.dtype(jnp.bfloat16)


class RoundedMoment(NamedTuple):
    """A moment stored in bfloat16 with stochastic rounding, and what its rounding draws from."""

    count: jax.Array  # shape=(), int32: stores so far, folded into the key at the next one
    key: jax.Array  # shape=(2,) for threefry, uint32: the raw PRNG key (jax.random.key_data)
    values: Any  # like params, bfloat16: the moment


class StatePolicy(NamedTuple):
    kind: str  # "follow" (the params' dtype), "float", "rounded" or "int8"
    dtype: Any  # the float dtype for "float" and "rounded", else None


def state_policy(fn: str, state_dtype: Any, stochastic_rounding: Any) -> StatePolicy:
    """``state_dtype`` and ``stochastic_rounding`` checked, naming ``fn``; raises on a bad pair."""
    if not isinstance(stochastic_rounding, (bool, np.bool_)):
        raise TypeError(f"{fn}: stochastic_rounding must be a bool, got {stochastic_rounding!r}")
    dtype = as_dtype(state_dtype)
    if dtype == jnp.dtype(jnp.int8):
        if stochastic_rounding:
            raise ValueError(
                f"{fn}: stochastic_rounding=True rounds float32 moments to bfloat16; int8 "
                "moments are quantised blockwise to the nearest map value, so it must be "
                f"False with state_dtype={state_dtype!r}"
            )
        return StatePolicy("int8", None)
    if state_dtype is not None and (dtype is None or not jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(
            f"{fn}: state_dtype must be None, a real floating dtype ('float32', 'bfloat16', "
            f"jnp.float16, ...) or 'int8', got {state_dtype!r}"
        )
    if stochastic_rounding and dtype != BFLOAT16:
        raise ValueError(
            f"{fn}: stochastic_rounding=True rounds moments to bfloat16, so it needs "
            f"state_dtype='bfloat16', got state_dtype={state_dtype!r}"
        )
    if dtype is None:
        return StatePolicy("follow", None)
    return StatePolicy("rounded" if stochastic_rounding else "float", dtype)


def state_dtype_args(fn: str, state_dtype: Any, stochastic_rounding: Any) -> dict[str, Any]:
    """The pair checked (naming the optimizer ``fn``), as keyword arguments for its blocks."""
    state_policy(fn, state_dtype, stochastic_rounding)
    return {"state_dtype": state_dtype, "stochastic_rounding": bool(stochastic_rounding)}


def _mix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijection of uint32 whose every output bit depends on
    every input bit."""
    h = h ^ jax.lax.shift_right_logical(h, np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ jax.lax.shift_right_logical(h, np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ jax.lax.shift_right_logical(h, np.uint32(16))


def uniform_bits(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """16 uniform random bits (uint32 in [0, 2¹⁶)) per element of an array of ``shape``:
    the upper half of mix(index·φ + seed), φ = 0x9E3779B9 (a counter-based generator, as
    SplitMix's). Elementwise, so it costs a few integer operations per element to compile
    and run, where ``jax.random.bits`` traces a threefry per leaf."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
        index = index + iota * np.uint32(stride % 2**32)  # modulo 2³²: a hash, not an index
        stride *= shape[axis]
    return jax.lax.shift_right_logical(
        _mix(index * np.uint32(0x9E3779B9) + seed), np.uint32(16)
    )


def step_seed(key: jax.Array, count: jax.Array) -> jax.Array:
    """The uint32 seed of the store number ``count`` of a moment with raw key ``key``: the
    key's words and the count folded together with :func:`_mix` (no threefry to trace)."""
    h = _mix(count.astype(jnp.uint32) * np.uint32(0x9E3779B9))
    for word in range(key.shape[-1]):
        h = _mix(h ^ key[..., word].astype(jnp.uint32))
    return h


def round_stochastically(x: jax.Array, seed: jax.Array) -> jax.Array:
    """``x`` rounded to bfloat16 up or down at random, P(up) = the share of the gap below x.

    bfloat16 is float32's upper 16 bits: a uniform 16-bit integer (:func:`uniform_bits` of
    the uint32 ``seed``) is added to the lower 16 bits and they are cut off, so x rounds
    away from 0 with probability (lower bits)/2¹⁶ and E[result] = x. x is first made
    float32 (to nearest, for a float64 x); non-finite values are kept as they are."""
    x = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    cut = (bits + uniform_bits(seed, x.shape)) & jnp.uint32(0xFFFF0000)
    rounded = jax.lax.bitcast_convert_type(cut, jnp.float32)
    return jnp.where(jnp.isfinite(x), rounded, x).astype(jnp.bfloat16)


def seed_key(tag: str) -> jax.Array:
    """The raw key a moment named ``tag`` starts with: ``key_data(key(crc32(tag)))``."""
    return jax.random.key_data(jax.random.key(zlib.crc32(tag.encode()) & 0x7FFFFFFF))


def salt_rounding_keys(state: Any, salt: str) -> Any:
    """``state`` with the key of every stochastically rounded moment in it XORed with
    crc32(``salt``). For a transformation that runs one block on several parts of the
    params (param groups, Muon's matrices and the rest): each part's block starts from the
    same key, and its leaf i would round with the same bits as leaf i of every other part."""
    tag = np.uint32(zlib.crc32(salt.encode()))

    def salted(node: Any) -> Any:
        if isinstance(node, RoundedMoment):
            return node._replace(key=node.key ^ tag)
        return node

    return jax.tree.map(salted, state, is_leaf=lambda n: isinstance(n, RoundedMoment))


#: How to bring a state saved by an earlier gradx to ``opt.init(params)``'s dtypes (any
#: structure, gradx.flat's included), told by the errors that refuse one.
CAST_TO_INIT = (
    "cast it to opt.init(params)'s dtypes: new = opt.init(params); state = "
    "jax.tree.unflatten(jax.tree.structure(new), [x.astype(t.dtype) for t, x in "
    "zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True)])"
)


@dataclasses.dataclass(frozen=True)
class MomentCodec:
    """How one moment of a block is stored: made by :func:`moment_codec`."""

    fn: str  # the block, for messages and the rounding key's tag
    name: str  # the argument the dtype came from, for messages
    policy: StatePolicy
    nonnegative: bool  # a second moment (real, never negative): the unsigned int8 map

    def init(self, params: Any, field: str, fill: Any = 0) -> Any:
        """The stored moment for ``params``, every element ``fill``; ``field`` names it (the
        state's field) so that two moments of a block round with keys of their own."""
        kind, dtype = self.policy
        if kind in ("follow", "float"):
            return moment_zeros(self.fn, self.name, params, dtype, self.nonnegative, fill)
        if kind == "rounded":
            values = moment_zeros(self.fn, self.name, params, dtype, self.nonnegative, fill)
            key = seed_key(f"{self.fn}.{field}")
            return RoundedMoment(count=jnp.zeros([], jnp.int32), key=key, values=values)

        def leaf(p: Any) -> Any:
            p = jnp.asarray(p)
            if jnp.iscomplexobj(p):
                raise TypeError(
                    f"{self.fn}: {self.name}='int8' needs real params (the int8 maps are "
                    f"real), got a {p.dtype} leaf; give complex params state_dtype float32 or "
                    "float64"
                )
            if p.size < BLOCK:
                return jnp.full_like(p, fill, dtype=jnp.float32)  # placed like p
            return quantized_full(p, fill, not self.nonnegative)

        # codes and absmax, two arrays per leaf: never inside one nnx Variable
        return jax.tree.map(leaf, unwrap_variables(params))

    def decode(self, moment: Any) -> Any:
        """The stored moment as a tree like the params, in float (float32 for int8).

        A never-negative moment that follows the params is stored as
        :func:`gradx._protocol.dtypes.moment_dtype` says (float32 for float16 params): one
        stored otherwise, float16, was saved by a gradx before that rule (where it could
        round to 0) or cast by hand, and is refused at trace time."""
        if self.policy.kind == "follow" and self.nonnegative:
            for path, leaf in jax.tree_util.tree_flatten_with_path(moment)[0]:
                want = moment_dtype(self.fn, self.name, leaf.dtype, None, True)
                if want != leaf.dtype:
                    raise TypeError(
                        f"{self.fn}: the never-negative moment at "
                        f"{jax.tree_util.keystr(path) or '(the root)'} of the state is "
                        f"{leaf.dtype}, but gradx stores it in {want} unless a dtype is given "
                        "(in float16 small squares round to 0); the state was saved by an "
                        f"earlier gradx or cast by hand: {CAST_TO_INIT}, or pass the dtype it "
                        "was made with"
                    )
        if self.policy.kind in ("follow", "float"):
            return moment  # nothing to trace
        return decode_moments(moment)

    def store(
        self, new: Any, old: Any, affine: Any = None, up: bool = False
    ) -> tuple[Any, Any]:
        """``(read, stored)``: the new moment (a tree like the params) as the block's update
        reads it, and as the state stores it (:meth:`encode`).

        ``affine``: ``(a, b, term, square)`` where the block computed ``new = a·old + b·x``
        elementwise, ``a`` and ``b`` scalars and ``x`` the tree ``term`` (squared where
        ``square``): int8 moments then compute their absmax from it (:meth:`encode`).
        ``up``: int8 moments round each element up to a map value, not to the nearest (a
        running maximum, which must never read back lower than it was); the float storages
        ignore it.

        Every moment is read as stored: for a float dtype as ``dtypes.as_stored`` says
        (rounded to bfloat16 and back), rounded stochastically as its bfloat16 values, int8
        as its codes decoded (float32). The update then reads the buffer the state writes,
        and the compiled step keeps no copy of the old moment. (bitsandbytes' 8-bit
        optimizers step with the float32 moment they computed; the two differ by the
        rounding to the map, within 6.25% of each element in the map's range.)"""
        kind = self.policy.kind
        if kind in ("follow", "float"):
            return as_stored(new, old), stored(new, old)
        encoded = self.encode(new, old, affine, up)
        if kind == "rounded":
            read = jax.tree.map(lambda v, n: v.astype(n.dtype), encoded.values, new)
            return read, encoded
        return decode_moments(encoded), encoded

    def encode(self, new: Any, old: Any, affine: Any = None, up: bool = False) -> Any:
        """``new`` (a tree like the params) stored as ``old`` is: once per step. An int8
        leaf's absmax is that of each block of ``new``, computed from it or, with ``affine``
        (see :meth:`store`), from the old codes and ``x``; ``up`` as in :meth:`store`."""
        kind = self.policy.kind
        if kind in ("follow", "float"):
            return stored(new, old)
        if kind == "rounded":  # one seed per store, from the key and the count
            seed = step_seed(old.key, old.count)
            leaves, treedef = jax.tree.flatten(new)
            values = treedef.unflatten(
                [
                    round_stochastically(x, _mix(seed + np.uint32(i * 0x85EBCA77 % 2**32)))
                    for i, x in enumerate(leaves)
                ]
            )
            count = old.count + jnp.ones([], old.count.dtype)
            return RoundedMoment(count=count, key=old.key, values=values)
        signed = not self.nonnegative

        def leaf(o: Any, n: jax.Array, t: Any = None) -> Any:
            if not is_quantized(o):
                return n.astype(o.dtype)
            absmax = None if t is None else affine_absmax(o, a, b, t, square)
            return quantize(n, signed, absmax, up)

        if affine is None:
            return jax.tree.map(leaf, old, new, is_leaf=is_quantized)
        a, b, term, square = affine
        return jax.tree.map(leaf, old, new, term, is_leaf=is_quantized)


def moment_codec(
    fn: str,
    name: str,
    dtype: Any,
    state_dtype: Any = None,
    stochastic_rounding: Any = False,
    *,
    nonnegative: bool = False,
) -> MomentCodec:
    """The codec of one moment of block ``fn``: ``dtype`` (its ``accumulator_dtype``,
    ``mu_dtype`` or ``nu_dtype``, named ``name``) wins where given, else ``state_dtype``.

    ``nonnegative``: a second moment (|g|², a sum of squares, an infinity norm): real for
    complex params, and quantised with the unsigned map. Raises on a bad value, naming
    ``fn`` and the argument."""
    explicit = dtype_arg(fn, name, dtype)
    policy = state_policy(fn, state_dtype, stochastic_rounding)
    if explicit is not None:
        return MomentCodec(fn, name, StatePolicy("float", explicit), nonnegative)
    return MomentCodec(fn, "state_dtype", policy, nonnegative)


def decode_moments(tree: Any) -> Any:
    """``tree`` with every stored moment in it read back as float arrays.

    ``tree`` may be one moment, a block's state or a whole optimizer state. A
    :class:`RoundedMoment` becomes its bfloat16 ``values``, a :class:`~gradx.SignedFloat8Moment`
    or :class:`~gradx.UnsignedFloat8Moment` the float32 array it stands for; anything else is
    kept as it is (so a moment stored in a float dtype is returned unchanged).

    Examples:
      >>> import jax.numpy as jnp, gradx
      >>> opt = gradx.adam(1e-3, state_dtype="int8")
      >>> state = opt.init({"w": jnp.ones((4, 256))})
      >>> nu = state.inner_state[0].by.nu["w"]  # the second moment, quantised
      >>> type(nu).__name__, nu.codes.dtype, nu.absmax.shape
      ('UnsignedFloat8Moment', dtype('int8'), (4, 1))
      >>> gradx.decode_moments(nu).shape
      (4, 256)
    """

    def leaf(node: Any) -> Any:
        if isinstance(node, RoundedMoment):
            return node.values
        return dequantize(node) if is_quantized(node) else node

    def is_stored(node: Any) -> bool:
        return isinstance(node, RoundedMoment) or is_quantized(node)

    return jax.tree.map(leaf, tree, is_leaf=is_stored)
