#!/usr/bin/env bash
# The update-step, compile-time and training-epoch benchmarks on an accelerator, in under 8
# minutes: each run is capped by `timeout` (110 + 110 + 120 + 100 s), and each writes its
# markdown tables to OUT as it goes, so a run cut short keeps the rows it finished.
#
#   benchmarks/gpu.sh [--small] [OUT]      # OUT: the argument, else $OUT, else ./bench-out
#
# --small (or GRADX_BENCH_SMALL=1): toy sizes, for a CPU smoke test (tests/test_benchmarks.py).
# PYTHON picks the interpreter (default: python). torch is skipped: on an accelerator machine
# it would time its CPU build against JAX on the device.
set -euo pipefail

small="${GRADX_BENCH_SMALL:-0}"
if [[ "${1:-}" == "--small" ]]; then
    small=1
    shift
fi
out="${1:-${OUT:-bench-out}}"
mkdir -p "$out"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"

if [[ "$small" == 1 ]]; then
    update_big=(--only sgd,adam --cases 10x100 --repeats 1 --min-time 0.001 --flat
        --hlo "$out/hlo")
    update_many=()  # one update-step run is enough for a smoke test
    compile=(--rules momentum --leaves 10 --skip-mlp --skip-fit --repeats 1
        --compile-repeats 1 --min-time 0.001)
    epoch=(--n 256 --repeats 1)
else
    update_big=(--cases big --repeats 5 --min-time 0.1)
    update_many=(--only adam,momentum --cases transformer,many --repeats 5 --min-time 0.1
        --flat)
    compile=(--rules adam --leaves 10,100,1000 --compile-repeats 1 --repeats 3
        --fit-repeats 1)
    epoch=(--repeats 3)
fi

status=0
run() {  # run NAME SECONDS SCRIPT ARGS...: stdout to OUT/NAME.md, stderr to OUT/NAME.log
    local name="$1" seconds="$2" script="$3"
    shift 3
    echo "== $name ($script $*; at most ${seconds} s)" >&2
    local start=$SECONDS rc=0
    timeout "$seconds" "$python" -u "$here/$script" "$@" >"$out/$name.md" 2>"$out/$name.log" \
        || rc=$?
    echo "   exit $rc after $((SECONDS - start)) s" >&2
    if [[ $rc != 0 ]]; then
        echo "" >>"$out/$name.md"
        echo "(cut short: exit $rc after $((SECONDS - start)) s; see $name.log)" >>"$out/$name.md"
        status=1
    fi
}

run update_step_big 110 update_step.py --no-torch "${update_big[@]}"
if [[ ${#update_many[@]} != 0 ]]; then
    run update_step_many 110 update_step.py --no-torch "${update_many[@]}"
fi
run compile_time 120 compile_time.py "${compile[@]}"
run train_epoch 100 train_epoch.py --no-torch "${epoch[@]}"
echo "tables in $out: $(cd "$out" && echo *.md)" >&2
exit $status
