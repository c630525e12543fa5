#!/usr/bin/env bash
# The capture side on the GPU machine, one device call per part (issues 15, 16, 17):
#
#   source .device/device-setup.sh; export DSOCR_TOKENIZER=$PWD/.device/tokenizer.json
#   python3 -m pip install -q --no-deps --no-build-isolation -e .
#   DSOCR_TRACE="python3 -m dsocr_perf.launch.cli" bash benchmarks/gpu_check.sh capture|fast|ncu
#
# (as run on 2026-12-07: `python3 -m pip`, since the GPU machine's `pip` belongs to another interpreter than the
# one with torch; the tokenizer copied from ../shared/data/deepseek-ocr/tokenizer/ into .device, since the
# offline fallback package is a 90 MB wheel; the launcher through python3 -m for the same interpreter reason.)
#
# capture (about 9 minutes):
#   c1  the GPU-marked tests (fast engine, session, a tiny capture under nsys)
#   c2  `make trace`, default page and tokens (faithful engine, 256), timed end to end (target <= 90 s)
#   c3  `make trace ENGINE=fast`, same page and tokens: decode wall per step under nsys (target <= 3 ms)
#   c4  benchmarks/engine_check.py: teacher-forced agreement of the engines, untraced ms/token of both
#   c5  the fast engine on the committed example's spec (128 tokens): traces/examples/<card>-gundam-fast.* (and, on
#       another card than the H100 of the committed example, the faithful engine on that spec too)
#   c6  `nsys export --type parquetdir` of c5's report (the Parquet reader's real input)
#   c7  what GPU metrics and operator ranges cost decode: 64 tokens x 2 without metrics, then with both
# fast (about 5 minutes): f1 and c3-c6 again, after a change to the fast engine; f7 one capture with operator ranges
# ncu (about 9 minutes):
#   n1  `make ncu` with 32 tokens (application-range replay): estimated and measured cost (target <= 2 min)
#   n2  the committed example's spec under ncu (128 tokens, application-range): traces/examples/<card>-gundam.ncu.*
#   n3  kernel replay of vision, prefill and decode step 0 (1 token): per-kernel rows for the kernel-class split
#
# Each step runs under a timeout that fits what is left of $BUDGET seconds (default 540); a failing step is logged
# and the next one runs. Everything is logged to $OUT/log.txt; at the end $OUT holds at most 8 files: log.txt,
# results.tar.gz (manifests, sidecars, CSVs, operator tables, the small JSONs) and the big files, gzipped (split
# into 15 MB parts when larger), while slots are left.
# Smoke test on a CPU machine, with stand-in nsys and ncu first on PATH:
#   SMOKE=1 bash benchmarks/gpu_check.sh capture
set -u -o pipefail
cd "$(dirname "$0")/.."
PART=${1:?usage: gpu_check.sh capture|fast|ncu}
START=$(date +%s)
OUT=${OUT:-/tmp/dsocr-gpu-check}
BUDGET=${BUDGET:-540}
WORK=/tmp/dsocr-gpu-check-$PART
TRACE_CMD=${DSOCR_TRACE:-dsocr-trace}
command -v "$TRACE_CMD" >/dev/null 2>&1 || TRACE_CMD="python3 -m dsocr_perf.launch.cli"
if [ -n "${SMOKE:-}" ]; then   # tiny everything, on the CPU
  TOKENS=3 EXAMPLE_TOKENS=3 SHORT_TOKENS=3 NCU_TOKENS=3
  EXTRA="--preset tiny --mode tiny --device cpu" MAKE_MODE=tiny CHECK_ARGS="--device cpu --preset tiny --tokens 8 --speed-tokens 16 --runs 1"
else
  TOKENS=256 EXAMPLE_TOKENS=128 SHORT_TOKENS=64 NCU_TOKENS=32
  EXTRA="" MAKE_MODE=gundam CHECK_ARGS=""
fi
# the example traces are named by the card they ran on (h100-gundam, h200-gundam, ...)
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE '[a-z][0-9]{2,3}' | head -1 |
       tr 'A-Z' 'a-z')
CARD=${CARD:-cpu}
EXAMPLE=$CARD-gundam
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
export WORK TRACE_CMD EXTRA MAKE_MODE

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() { echo; echo "=== [$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
# run_step NAME MAX_SECONDS MIN_SECONDS CMD...: CMD under a timeout that fits what is left of the budget.
run_step() {
  local name=$1 max=$2 min=$3; shift 3
  local budget=$(( $(left) - 25 ))
  if (( budget < min )); then step "$name: SKIPPED (only ${budget}s of the budget left)"; return 0; fi
  local limit=$(( budget < max ? budget : max ))
  step "$name (limit ${limit}s): $*"
  local t0 rc wall
  t0=$(date +%s%N)
  timeout -s INT --kill-after=20 "$limit" "$@"
  rc=$?
  wall=$(awk -v ns=$(( $(date +%s%N) - t0 )) 'BEGIN { printf "%.1f", ns / 1e9 }')
  if (( rc == 124 || rc == 137 )); then echo "=== $name: TIMED OUT after ${limit}s"
  else echo "=== $name: exit $rc, wall ${wall} s"; fi
  return 0
}
# make TARGET NAME TOKENS [ARGS...]: the Makefile's own command line (what users type)
make_target() {
  local target=$1 name=$2 tokens=$3; shift 3
  if command -v make >/dev/null 2>&1; then
    make "$target" NAME="$name" MAX_NEW_TOKENS="$tokens" MODE="$MAKE_MODE" ENGINE="${ENGINE:-faithful}" DSOCR_TRACE="$TRACE_CMD" \
      ARGS="--out-dir $WORK --force $EXTRA $*"
  else   # the Makefile's command line, where make is missing
    $TRACE_CMD launch/assets/sample_page.png $([ "$target" = ncu ] && echo --ncu) --mode "$MAKE_MODE" \
      --max-new-tokens "$tokens" --name "$name" --engine "${ENGINE:-faithful}" --random-weights --out-dir "$WORK" --force $EXTRA "$@"
  fi
}
export -f make_target

environment() {
  step "environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm --format=csv 2>&1 | head -3
  echo "nsys: $(command -v nsys || echo MISSING) $(nsys --version 2>/dev/null | tail -1)"
  echo "ncu:  $(command -v ncu || echo MISSING) $(ncu --version 2>/dev/null | tail -1)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  python3 -c "import nvtx" 2>/dev/null && echo "nvtx: ok" || echo "nvtx: MISSING (source .device/device-setup.sh)"
  git log --oneline -1 2>/dev/null || true
}

capture_part() {
  run_step "c1 GPU tests" 100 40 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast.py tests/test_session.py \
    tests/test_launch_gpu.py
  run_step "c2 make trace (faithful, $TOKENS tokens)" 200 90 bash -c 'make_target "$@"' _ trace faithful "$TOKENS"
  run_step "c3 make trace ENGINE=fast ($TOKENS tokens)" 150 60 env ENGINE=fast bash -c 'make_target "$@"' _ trace fast "$TOKENS"
  run_step "c4 engine check" 150 60 python3 benchmarks/engine_check.py --out "$WORK/engine_check.json" --force $CHECK_ARGS
  run_step "c5 example spec, fast engine ($EXAMPLE_TOKENS tokens)" 120 60 env ENGINE=fast bash -c 'make_target "$@"' _ trace \
    "$EXAMPLE-fast" "$EXAMPLE_TOKENS"
  if [ "$CARD" != h100 ]; then   # the committed faithful example is from an H100: its twin on this card
    run_step "c5b example spec, faithful engine ($EXAMPLE_TOKENS tokens)" 150 70 bash -c 'make_target "$@"' _ trace \
      "$EXAMPLE" "$EXAMPLE_TOKENS"
  fi
  if [ -f "$WORK/$EXAMPLE-fast.nsys-rep" ] && [ -z "${SMOKE:-}" ]; then
    run_step "c6 nsys export parquetdir" 60 20 nsys export --type parquetdir --force-overwrite true \
      --output "$WORK/$EXAMPLE-fast.parquetdir" "$WORK/$EXAMPLE-fast.nsys-rep"
  fi
  run_step "c7a $SHORT_TOKENS tokens x 2, no GPU metrics" 90 50 $TRACE_CMD launch/assets/sample_page.png \
    --max-new-tokens "$SHORT_TOKENS" --repeats 2 --no-gpu-metrics --no-torch-profiler --no-analyze --name m-off \
    --out-dir "$WORK" --force $EXTRA
  run_step "c7b $SHORT_TOKENS tokens x 2, GPU metrics + operator ranges" 150 80 $TRACE_CMD launch/assets/sample_page.png \
    --max-new-tokens "$SHORT_TOKENS" --repeats 2 --torch-ops-nvtx --no-torch-profiler --no-analyze --name m-on \
    --out-dir "$WORK" --force $EXTRA
  step "c7c decode ms/token: GPU metrics off / on / operator ranges"
  python3 benchmarks/capture_cost.py "$WORK/m-off.json" "$WORK/m-on.json" "$WORK/m-on.ops-nvtx.json" \
    --json "$WORK/capture_cost.json" || echo "=== c7c: no comparison (a capture above failed)"
  ls -la "$WORK"
}

fast_part() {   # the fast engine again after a change: its GPU test, engine check, traces (c3, c4, c5, c6)
  run_step "f1 GPU test of the fast engine" 60 30 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast.py
  run_step "c3 make trace ENGINE=fast ($TOKENS tokens)" 150 60 env ENGINE=fast bash -c 'make_target "$@"' _ trace fast "$TOKENS"
  run_step "c4 engine check" 150 60 python3 benchmarks/engine_check.py --out "$WORK/engine_check.json" --force $CHECK_ARGS
  run_step "c5 example spec, fast engine ($EXAMPLE_TOKENS tokens)" 120 60 env ENGINE=fast bash -c 'make_target "$@"' _ trace \
    "$EXAMPLE-fast" "$EXAMPLE_TOKENS"
  if [ -f "$WORK/$EXAMPLE-fast.nsys-rep" ] && [ -z "${SMOKE:-}" ]; then
    run_step "c6 nsys export parquetdir" 60 20 nsys export --type parquetdir --force-overwrite true \
      --output "$WORK/$EXAMPLE-fast.parquetdir" "$WORK/$EXAMPLE-fast.nsys-rep"
  fi
  run_step "f7 operator ranges ($SHORT_TOKENS tokens): a real trace for sql/host_operators_per_stage.sql" 120 60 \
    $TRACE_CMD launch/assets/sample_page.png --max-new-tokens "$SHORT_TOKENS" --torch-ops-nvtx --no-torch-profiler \
    --name m-on --out-dir "$WORK" --force $EXTRA
  ls -la "$WORK"
}

ncu_part() {
  run_step "n1 make ncu ($NCU_TOKENS tokens, app-range)" 200 90 bash -c 'make_target "$@"' _ ncu check "$NCU_TOKENS"
  run_step "n2 example spec under ncu ($EXAMPLE_TOKENS tokens, app-range)" 260 120 bash -c 'make_target "$@"' _ ncu \
    "$EXAMPLE" "$EXAMPLE_TOKENS"
  run_step "n3 kernel replay: vision, prefill, decode step 0" 330 180 bash -c 'make_target "$@"' _ ncu kernels 1 \
    --ncu-kernels --ncu-decode-steps first
  ls -la "$WORK"
}

slots=6   # 8 files: log.txt + results.tar.gz + up to 6 more
big() {   # big FILE: gzip unless compressed, split into 15 MB parts when larger; skipped when no slot is left
  local f=$1 g size parts
  [ -e "$f" ] || { echo "pack: no $f"; return 0; }
  if [ -d "$f" ]; then tar -czf "$f.tar.gz" -C "$(dirname "$f")" "$(basename "$f")" && g="$f.tar.gz"
  else case "$f" in *.gz) g=$f ;; *) gzip -6 -c "$f" > "$f.gz" && g="$f.gz" ;; esac; fi
  size=$(stat -c %s "$g"); parts=$(( (size + 15728639) / 15728640 ))
  if (( parts > slots )); then echo "pack: NOT copied $g ($size bytes, $parts parts, $slots slots left)"; return 0; fi
  if (( parts == 1 )); then cp "$g" "$OUT/"; else split -b 15M -d "$g" "$OUT/$(basename "$g").part"; fi
  slots=$(( slots - parts ))
  echo "pack: $(basename "$g") $size bytes in $parts file(s)"
}

pack() {
  step "pack into $OUT"
  ( cd "$WORK" && tar -czf "$OUT/results.tar.gz" --ignore-failed-read --exclude='*.sqlite' --exclude='*.nsys-rep' \
      --exclude='*.pt.trace.json.gz' --exclude='*.parquetdir' --exclude='*.ncu-rep' --exclude='*.gz' . )
  tar -tzvf "$OUT/results.tar.gz"
  if [ "$PART" != ncu ]; then
    big "$WORK/$EXAMPLE-fast.sqlite"
    [ "$CARD" != h100 ] && big "$WORK/$EXAMPLE.sqlite"
    big "$WORK/fast.sqlite"
    big "$WORK/faithful.sqlite"
    big "$WORK/$EXAMPLE-fast.parquetdir"
    big "$WORK/m-on.ops-nvtx.sqlite"
  fi
  ls -la "$OUT"
  echo "split parts: cat NAME.part00 NAME.part01 ... > NAME"
}

main() {
  environment
  case "$PART" in
    capture) capture_part ;;
    fast) fast_part ;;
    ncu) ncu_part ;;
    *) echo "unknown part $PART (capture or ncu)"; return 2 ;;
  esac
  pack
  step "done"
}
main 2>&1 | tee -a "$OUT/log.txt"
