#!/usr/bin/env bash
# The capture side on the GPU machine in one call, about 6 minutes (issues 15, 16, 17):
#
#   source .device/device-setup.sh && pip install -q --no-deps --no-build-isolation -e . && bash benchmarks/gpu_capture_check.sh
#
#   1. `make trace` on the bundled page, default tokens (256), timed end to end; its phase times are printed
#      (target: <= 90 s on an H100)
#   2. the cost of GPU metrics and of operator ranges on decode: the same short session (64 tokens, 2 repeats)
#      captured with --no-gpu-metrics, then with GPU metrics and --torch-ops-nvtx (a second capture with operator
#      ranges); benchmarks/capture_cost.py compares decode ms/token from the three manifests
#   3. `make ncu` with 32 tokens (application-range replay): cost estimate before, measured cost after
#   4. if time is left: is lts__t_bytes.sum accepted in application-range replay? (a 2-token page)
# Each step runs under a timeout that fits the budget ($BUDGET s from the start, default 470); a failing step is
# logged and the next one runs. Everything goes to $OUT/log.txt as well. At the end $OUT holds at most 8 files:
#   log.txt, results.tar.gz (manifests, ops table, ncu CSV + sidecar, capture_cost.json), check.sqlite.gz (the
#   make-trace export; split into 15 MB parts if larger) and, while slots are left, m-on.ops-nvtx.sqlite.gz and
#   check.pt.trace.json.gz.
# Smoke test on a CPU machine, with stand-in nsys and ncu first on PATH (tests/test_launch_cli.py, test_launch_ncu.py):
#   EXTRA="--preset tiny --mode tiny --device cpu" TRACE_TOKENS=3 SHORT_TOKENS=3 NCU_TOKENS=3 bash benchmarks/gpu_capture_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/dsocr-gpu-check}
BUDGET=${BUDGET:-470}
WORK=/tmp/dsocr-gpu-check-work
TRACE_CMD=${DSOCR_TRACE:-dsocr-trace}
command -v "$TRACE_CMD" >/dev/null 2>&1 || TRACE_CMD="python3 -m dsocr_perf.launch.cli"
TRACE_TOKENS=${TRACE_TOKENS:-256}   # make trace's default
SHORT_TOKENS=${SHORT_TOKENS:-64}
NCU_TOKENS=${NCU_TOKENS:-32}
EXTRA=${EXTRA:-}
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"

# make trace / make ncu, or the command line the Makefile runs where make is missing.
make_target() {   # make_target trace|ncu TOKENS
  if command -v make >/dev/null 2>&1; then
    make "$1" NAME=check MAX_NEW_TOKENS="$2" DSOCR_TRACE="$TRACE_CMD" ARGS="--out-dir $WORK --force $EXTRA"
  elif [ "$1" = trace ]; then
    $TRACE_CMD launch/assets/sample_page.png --mode gundam --max-new-tokens "$2" --repeats 1 --name check \
      --random-weights --out-dir "$WORK" --force $EXTRA
  else
    $TRACE_CMD launch/assets/sample_page.png --ncu --mode gundam --max-new-tokens "$2" --name check \
      --random-weights --out-dir "$WORK" --force $EXTRA
  fi
}
export -f make_target   # run_step runs it under `timeout`, through bash
export WORK TRACE_CMD EXTRA

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() { echo; echo "=== [$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
# run_step NAME MAX_SECONDS MIN_SECONDS CMD...: CMD under a timeout that fits what is left of the budget.
run_step() {
  local name=$1 max=$2 min=$3; shift 3
  local budget=$(( $(left) - 30 ))
  if (( budget < min )); then step "$name: SKIPPED (only ${budget}s of the budget left)"; return 0; fi
  local limit=$(( budget < max ? budget : max ))
  step "$name (limit ${limit}s): $*"
  local t0 rc wall
  t0=$(date +%s%N)
  timeout -s INT --kill-after=30 "$limit" "$@"
  rc=$?
  wall=$(awk -v ns=$(( $(date +%s%N) - t0 )) 'BEGIN { printf "%.1f", ns / 1e9 }')
  if (( rc == 124 || rc == 137 )); then echo "=== $name: TIMED OUT after ${limit}s"
  else echo "=== $name: exit $rc, wall ${wall} s"; fi
  return 0
}

main() {
step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm --format=csv 2>&1 | head -3
echo "nsys: $(command -v nsys || echo MISSING) $(nsys --version 2>/dev/null | tail -1)"
echo "ncu:  $(command -v ncu || echo MISSING) $(ncu --version 2>/dev/null | tail -1)"
echo "dsocr-trace: $TRACE_CMD"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
python3 -c "import nvtx" 2>/dev/null && echo "nvtx: ok" || echo "nvtx: MISSING (source .device/device-setup.sh)"
echo "--- nsys profile --help: the options dsocr-trace looks for"
nsys profile --help 2>&1 | grep -E -- "--gpu-metrics-(devices?|frequency)|--pytorch" | head -6
echo "--- nsys profile --gpu-metrics-devices=help"
timeout 60 nsys profile --gpu-metrics-devices=help 2>&1 | head -8

# 1. make trace, default page and tokens, end to end
run_step "1 make trace (default page, $TRACE_TOKENS tokens)" 300 120 bash -c 'make_target "$@"' _ trace "$TRACE_TOKENS"
ls -la "$WORK"

# 2. GPU metrics and operator ranges: what they cost decode
run_step "2a capture without GPU metrics ($SHORT_TOKENS tokens x 2)" 150 60 $TRACE_CMD --max-new-tokens "$SHORT_TOKENS" \
  --repeats 2 --no-gpu-metrics --no-torch-profiler --no-analyze --name m-off --out-dir "$WORK" --force $EXTRA
run_step "2b capture with GPU metrics + operator-range capture ($SHORT_TOKENS tokens x 2)" 240 90 $TRACE_CMD \
  --max-new-tokens "$SHORT_TOKENS" --repeats 2 --torch-ops-nvtx --no-torch-profiler --no-analyze --name m-on \
  --out-dir "$WORK" --force $EXTRA
step "2c decode ms/token: GPU metrics off / on / operator ranges"
python3 benchmarks/capture_cost.py "$WORK/m-off.json" "$WORK/m-on.json" "$WORK/m-on.ops-nvtx.json" \
  --json "$WORK/capture_cost.json" || echo "=== 2c: no comparison (a capture above failed)"

# 3. make ncu with 32 tokens: application-range replay over the stage ranges
run_step "3 make ncu ($NCU_TOKENS tokens, app-range)" 240 90 bash -c 'make_target "$@"' _ ncu "$NCU_TOKENS"
[ -f "$WORK/check.ncu.csv" ] && head -c 1500 "$WORK/check.ncu.csv" && echo

# 4. an open question of docs/gpu-machine.md, if time is left
run_step "4 app-range with lts__t_bytes.sum (2 tokens)" 120 60 $TRACE_CMD --ncu --max-new-tokens 2 --name lts \
  --ncu-metrics gpu__time_duration.sum,sm__ops_path_tensor_src_bf16_dst_fp32.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum \
  --out-dir "$WORK" --force $EXTRA

step "pack into $OUT"
rm -f "$WORK"/*.dsocr-cache.duckdb*
( cd "$WORK" && tar -czf "$OUT/results.tar.gz" --ignore-failed-read check.json check.ops.md check.ncu.csv \
    check.ncu.json capture_cost.json m-off.json m-on.json m-on.ops-nvtx.json lts.ncu.csv lts.ncu.json 2>/dev/null )
slots=6   # 8 files: log.txt + results.tar.gz + up to 6 more
big() {   # big FILE: gzip unless compressed, split into 15 MB parts when larger; skipped when no slot is left
  local f=$1 g size parts
  [ -f "$f" ] || { echo "pack: no $f"; return 0; }
  case "$f" in *.gz) g=$f ;; *) gzip -6 -c "$f" > "$f.gz" && g="$f.gz" ;; esac
  size=$(stat -c %s "$g"); parts=$(( (size + 15728639) / 15728640 ))
  if (( parts > slots )); then echo "pack: NOT copied $g ($size bytes, $parts parts, $slots slots left)"; return 0; fi
  if (( parts == 1 )); then cp "$g" "$OUT/"; else split -b 15M -d "$g" "$OUT/$(basename "$g").part"; fi
  slots=$(( slots - parts ))
  echo "pack: $(basename "$g") $size bytes in $parts file(s)"
}
big "$WORK/check.sqlite"
big "$WORK/m-on.ops-nvtx.sqlite"
big "$WORK/check.pt.trace.json.gz"
ls -la "$OUT"; tar -tzvf "$OUT/results.tar.gz"
echo "split parts: cat NAME.part00 NAME.part01 ... > NAME"
step "done"
}
main 2>&1 | tee -a "$OUT/log.txt"
