"""How fast a hand-written, fused C kernel makes a blockwise-int8 Adam step on this CPU.

    python benchmarks/int8_native_ceiling.py [--n 16777216] [--repeats 21] [--cc gcc]

Why: issue 28 asked for gradx's int8-moment step within 1.5× of its float32 step on CPU.
Under XLA it is 2.8× at best (docs/benchmarks.md); this script asks whether a native kernel,
which gradx does not ship, would get there, and which part of the step stops it.

It writes three OpenMP kernels in C, compiles them with ``--cc -O3 -march=native -fopenmp
-fno-math-errno`` and calls them through ``ctypes`` on one leaf of ``--n`` float32 params
(a multiple of 256), each in place, one pass over the leaf, all cores:

* ``float32``: Adam with float32 moments (28 bytes per parameter moved);
* ``int8``: Adam with gradx's int8 moments, fused per block of 256: decode m and v (gradx's
  maps, ``map[code]·scale``), update them and the params, take each block's absmax, encode
  (gradx's nearest-value tables: one lookup in the 2¹⁶-entry bucket table and one comparison
  with a midpoint; ``quantized.nearest_index``). 12 bytes per parameter moved, plus scales;
* ``int8 without encode``: the same less the encode (codes and scales left as they were): a
  lower bound, which says what the encode's table lookups cost.

Before timing, one ``int8`` step is checked against ``gradx.adam(state_dtype="int8")`` from
the same non-trivial state: params within 1e-6 and at least 99.9% of the codes equal (the C
kernel's float operations come in another order, so an element exactly between two map
values may round the other way). Reported: the median time per step over ``--repeats``
measurements (the three kernels interleaved), and its ratio to ``float32``.
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import gradx
from gradx._protocol import quantized

B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-3

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "tables.h"
#define B 256

void float32_adam(long n, float *restrict p, const float *restrict g, float *restrict m,
                  float *restrict v, float lr, float b1, float b2, float eps, float c1, float c2) {
  #pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) {
    float mi = b1 * m[i] + (1 - b1) * g[i], vi = b2 * v[i] + (1 - b2) * g[i] * g[i];
    m[i] = mi; v[i] = vi;
    p[i] -= lr * (mi / c1) / (sqrtf(vi / c2) + eps);
  }
}

static void int8(long n, float *restrict p, const float *restrict g, int8_t *restrict mc,
                 float *restrict ms, int8_t *restrict vc, float *restrict vs, float lr,
                 float b1, float b2, float eps, float c1, float c2, int encode) {
  #pragma omp parallel for schedule(static)
  for (long b = 0; b < n / B; b++) {
    float m[B], v[B], sm = ms[b], sv = vs[b], am = 0, av = 0;
    const float *restrict gb = g + b * B;
    float *restrict pb = p + b * B;
    int8_t *restrict mb = mc + b * B, *restrict vb = vc + b * B;
    for (int i = 0; i < B; i++) {
      float mi = b1 * (MAP_S[mb[i] + 128] * sm) + (1 - b1) * gb[i];
      float vi = b2 * (MAP_U[vb[i] + 128] * sv) + (1 - b2) * (gb[i] * gb[i]);
      pb[i] -= lr * (mi / c1) / (sqrtf(vi / c2) + eps);
      m[i] = mi; v[i] = vi;
    }
    for (int i = 0; i < B; i++) {  /* ternaries, not fmaxf: they vectorise */
      float a = fabsf(m[i]);
      am = a > am ? a : am; av = v[i] > av ? v[i] : av;
    }
    if (!encode) continue;
    ms[b] = am; vs[b] = av;
    float im = am > 0 ? 1 / am : 1, iv = av > 0 ? 1 / av : 1;
    for (int i = 0; i < B; i++) {
      float x = m[i] * im; uint32_t u; memcpy(&u, &x, 4);
      int k = BUCKET_S[u >> 16]; mb[i] = (int8_t)(k + (MID_S[k] < x) - 128);
    }
    for (int i = 0; i < B; i++) {
      float x = v[i] * iv; uint32_t u; memcpy(&u, &x, 4);
      int k = BUCKET_U[u >> 16]; vb[i] = (int8_t)(k + (MID_U[k] < x) - 128);
    }
  }
}

void int8_adam(long n, float *p, const float *g, int8_t *mc, float *ms, int8_t *vc, float *vs,
               float lr, float b1, float b2, float eps, float c1, float c2) {
  int8(n, p, g, mc, ms, vc, vs, lr, b1, b2, eps, c1, c2, 1);
}

void int8_adam_no_encode(long n, float *p, const float *g, int8_t *mc, float *ms, int8_t *vc,
                         float *vs, float lr, float b1, float b2, float eps, float c1, float c2) {
  int8(n, p, g, mc, ms, vc, vs, lr, b1, b2, eps, c1, c2, 0);
}
"""


def c_array(name: str, values: np.ndarray, ctype: str) -> str:
    if ctype == "float":
        # exact: C99 hexadecimal literals of the float32 values
        text = ",".join(f"{float(x).hex()}f" if np.isfinite(x) else "INFINITY" for x in values)
    else:
        text = ",".join(str(int(x)) for x in values)
    return f"static const {ctype} {name}[{len(values)}] = {{{text}}};\n"


def tables() -> str:
    out = ""
    for signed, tag in ((True, "S"), (False, "U")):
        out += c_array(f"MAP_{tag}", quantized.MAPS[signed], "float")
        out += c_array(f"MID_{tag}", quantized.PADDED[signed], "float")
        out += c_array(f"BUCKET_{tag}", quantized.BUCKETS[signed], "unsigned char")
    return out


def build(cc: str, folder: pathlib.Path) -> ctypes.CDLL:
    if shutil.which(cc) is None:
        sys.exit(f"int8_native_ceiling.py: --cc {cc!r} is not on PATH; a C compiler is needed")
    (folder / "tables.h").write_text(tables())
    (folder / "kernels.c").write_text(SOURCE)
    lib = folder / "kernels.so"
    flags = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]
    subprocess.run([cc, *flags, str(folder / "kernels.c"), "-o", str(lib), "-lm"], check=True)
    return ctypes.CDLL(str(lib))


def pointer(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def scalars(t: int) -> list[ctypes.c_float]:
    c1, c2 = 1 - B1**t, 1 - B2**t
    return [ctypes.c_float(x) for x in (LR, B1, B2, EPS, c1, c2)]


def check(lib: ctypes.CDLL, n: int) -> None:
    """One C int8 step against gradx's, from the state gradx reaches after 3 steps."""
    rng = np.random.default_rng(0)
    opt = gradx.adam(LR, state_dtype="int8")
    params = jnp.asarray(rng.normal(size=n).astype(np.float32))
    state = opt.init(params)
    step = jax.jit(lambda p, s, g: opt.update(g, s, p))
    for _ in range(3):
        grads = jnp.asarray(rng.normal(size=n).astype(np.float32))
        updates, state = step(params, state, grads)
        params = params + updates
    grads = jnp.asarray(rng.normal(size=n).astype(np.float32))
    updates, new_state = step(params, state, grads)
    want_params = np.asarray(params + updates)

    def moments(state: object) -> tuple[object, object]:  # (m, v), found by their types
        leaves = jax.tree.leaves(state, is_leaf=quantized.is_quantized)
        m = [x for x in leaves if isinstance(x, quantized.SignedInt8Moment)]
        v = [x for x in leaves if isinstance(x, quantized.UnsignedInt8Moment)]
        assert len(m) == len(v) == 1, (m, v)
        return m[0], v[0]

    (old_m, old_v), (new_m, new_v) = moments(state), moments(new_state)
    p, g = np.array(params), np.asarray(grads)
    mc, ms = np.array(old_m.codes), np.array(old_m.scales)
    vc, vs = np.array(old_v.codes), np.array(old_v.scales)
    lib.int8_adam(
        ctypes.c_long(n),
        pointer(p),
        pointer(g),
        pointer(mc),
        pointer(ms),
        pointer(vc),
        pointer(vs),
        *scalars(4),
    )
    np.testing.assert_allclose(p, want_params, rtol=0, atol=1e-6)
    for got, want in ((mc, new_m.codes), (vc, new_v.codes)):
        same = np.mean(got == np.asarray(want))
        assert same >= 0.999, f"only {same:.4%} of the codes agree with gradx's"
        assert np.max(np.abs(got.astype(int) - np.asarray(want).astype(int))) <= 1
    np.testing.assert_allclose(ms, new_m.scales, rtol=1e-6)
    np.testing.assert_allclose(vs, new_v.scales, rtol=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 24)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--cc", default="gcc")
    args = parser.parse_args()
    if args.n % 256:
        parser.error(f"--n must be a multiple of 256, got {args.n}")
    with tempfile.TemporaryDirectory() as folder:
        lib = build(args.cc, pathlib.Path(folder))
        check(lib, 1 << 16)
        n = args.n
        rng = np.random.default_rng(1)
        g = (rng.normal(size=n) * 1e-3).astype(np.float32)
        p, m, v = (np.full(n, 0.5, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32))
        codes = [np.zeros(n, np.int8), np.zeros(n, np.int8)]
        scales = [np.zeros(n // 256, np.float32), np.zeros(n // 256, np.float32)]
        float32 = [pointer(p), pointer(g), pointer(m), pointer(v)]
        int8 = [
            pointer(p),
            pointer(g),
            pointer(codes[0]),
            pointer(scales[0]),
            pointer(codes[1]),
            pointer(scales[1]),
        ]
        rows = {
            "float32": (lib.float32_adam, float32),
            "int8": (lib.int8_adam, int8),
            "int8 without encode": (lib.int8_adam_no_encode, int8),
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        t = 1
        for repeat in range(args.repeats + 1):  # the first one warms up
            for name, (kernel, arrays) in rows.items():
                start = time.perf_counter()
                for _ in range(5):
                    kernel(ctypes.c_long(n), *arrays, *scalars(t))
                    t += 1
                if repeat:
                    times[name].append((time.perf_counter() - start) / 5)
    base = statistics.median(times["float32"])
    print(
        f"one leaf of {n:,} float32 params, {args.cc} -O3 -march=native -fopenmp, "
        f"median of {args.repeats}; int8 checked against gradx.adam(state_dtype='int8')"
    )
    print("| kernel | ms/step | × float32 |\n|---|---|---|")
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        print(f"| {name} | {ms:.2f} | {ms / (base * 1e3):.2f} |")


if __name__ == "__main__":
    main()
