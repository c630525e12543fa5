#!/usr/bin/env bash
# The whole capture-side check on a GPU machine, in one call (docs: ../shared/docs/gpu-machine.md).
#
#   source .device/device-setup.sh && pip install -q --no-deps --no-build-isolation -e . && bash launch/device_check.sh
#
# Steps (each runs even if an earlier one failed; all output goes to $OUT/log.txt):
#   1. dsocr-trace on the bundled page: official preset, random weights, Gundam, $TOKENS decode tokens
#      (the PyTorch profiler pass decodes $TORCH_TOKENS to keep its trace small)
#   2. nsys stats reference CSVs (nvtx_kern_sum, nvtx_gpu_proj_sum, nvtx_sum, cuda_gpu_kern_sum) on a copy
#   3. the session CLI once: per-stage host times, decode ms/token, peak GPU memory
#   4. the stage-range overhead: ranges on vs off, $RUNS runs each, $OVERHEAD_TOKENS decode tokens
#   5. tests/test_launch_gpu.py (tiny preset under the real nsys), when at least 90 s are left
#   6. (R3=1 only) a second capture with 3 repeats for the repeat spread
# Then packs the results into $OUT: at most 8 files of at most 16 MiB (big files gzip'ed, split if needed).
# A time budget ($BUDGET s from start, default 530) shortens or skips late steps so packing always happens.
set -u -o pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/dsocr-device-out}
NAME=${NAME:-h100-gundam}
TOKENS=${TOKENS:-256}
TORCH_TOKENS=${TORCH_TOKENS:-64}
OVERHEAD_TOKENS=${OVERHEAD_TOKENS:-64}
RUNS=${RUNS:-5}
BUDGET=${BUDGET:-530}
R3=${R3:-0}
MODE=${MODE:-gundam}
PRESET=${PRESET:-official}
# Smoke test on a CPU machine (stand-in nsys on PATH): PRESET=tiny MODE=tiny TOKENS=3 EXTRA="--device cpu"
EXTRA=${EXTRA:-}
WORK=/tmp/dsocr-check
rm -rf "$WORK" && mkdir -p "$WORK/traces" "$WORK/ref" "$OUT"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() { echo; echo "=== [$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
# run_step NAME MAX_SECONDS MIN_SECONDS CMD...: runs CMD with a timeout that fits the budget.
run_step() {
  local name=$1 max=$2 min=$3; shift 3
  local budget=$(( $(left) - 25 ))
  if (( budget < min )); then step "$name: SKIPPED (only ${budget}s of the budget left)"; return 0; fi
  local limit=$(( budget < max ? budget : max ))
  step "$name (limit ${limit}s): $*"
  timeout -s INT --kill-after=60 "$limit" "$@"
  local rc=$?
  if (( rc == 124 || rc == 137 )); then echo "=== $name: TIMED OUT after ${limit}s"; else echo "=== $name: exit $rc"; fi
  return 0
}

main() {
step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm --format=csv 2>&1 | head -3
echo "nsys: $(command -v nsys || echo MISSING) $(nsys --version 2>/dev/null | tail -1)"
python3 -c "from dsocr_perf.launch.nsys import find_nsys, find_importer; n = find_nsys(); print('importer:', find_importer(n.path))" 2>&1
imp=$(python3 -c "from dsocr_perf.launch.nsys import find_nsys, find_importer; print(find_importer(find_nsys().path) or '')" 2>/dev/null)
[ -n "$imp" ] && { ldd "$imp" | grep "not found" || echo "importer libraries: all found"; }
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
python3 -c "import nvtx" 2>/dev/null && echo "nvtx: ok" \
  || echo "nvtx: MISSING -- carry .device (../shared/tools/device-prepare.sh) and source .device/device-setup.sh"
python3 -c "import duckdb" 2>/dev/null && echo "duckdb: ok" || echo "duckdb: not installed (analysis runs on the fetched trace instead)"

# 1. the capture
run_step "1 dsocr-trace" 360 120 python3 -m dsocr_perf.launch.cli launch/assets/sample_page.png --mode "$MODE" --random-weights \
  --preset "$PRESET" $EXTRA --max-new-tokens "$TOKENS" --torch-max-new-tokens "$TORCH_TOKENS" --repeats 1 --name "$NAME" \
  --out-dir "$WORK/traces" --force
SQLITE="$WORK/traces/$NAME.sqlite"
ls -la "$WORK/traces"

# 2. NVIDIA's reference reports, on a copy (nsys stats adds indexes to the file it reads)
if [ -f "$SQLITE" ]; then
  cp "$SQLITE" "$WORK/stats-copy.sqlite"
  run_step "2 nsys stats" 90 20 nsys stats --report nvtx_kern_sum,nvtx_gpu_proj_sum,nvtx_sum,cuda_gpu_kern_sum \
    --format csv --output "$WORK/ref/$NAME" "$WORK/stats-copy.sqlite"
  rm -f "$WORK/stats-copy.sqlite"
  head -20 "$WORK/ref/${NAME}_nvtx_kern_sum.csv" 2>/dev/null
else
  step "2 nsys stats: SKIPPED (no $SQLITE)"
fi

# 3. the session on its own: host times per stage, decode ms/token, peak memory
run_step "3 session CLI" 100 40 python3 -m dsocr_perf.dsocr run launch/assets/sample_page.png --mode "$MODE" --random-weights \
  --preset "$PRESET" $EXTRA --ignore-eos --sync-stages --max-new-tokens "$TOKENS" --out "$WORK/session-out" --force

# 4. overhead of the stage ranges, outside any profiler
run_step "4 overhead" 150 60 python3 -m dsocr_perf.launch.overhead launch/assets/sample_page.png --runs "$RUNS" \
  --mode "$MODE" --preset "$PRESET" $EXTRA \
  --max-new-tokens "$OVERHEAD_TOKENS" --json "$WORK/overhead.json"

# 5. the GPU test of the launcher (tiny preset, real nsys), if time is left
run_step "5 pytest tests/test_launch_gpu.py" 150 90 python3 -m pytest -q -x tests/test_launch_gpu.py

# 6. optional: repeats inside one capture (issue 7)
if [ "$R3" = 1 ]; then
  run_step "6 dsocr-trace x3 repeats" 240 120 python3 -m dsocr_perf.launch.cli launch/assets/sample_page.png --mode "$MODE" \
    --random-weights --preset "$PRESET" $EXTRA --max-new-tokens 64 --repeats 3 --no-torch-profiler --name "$NAME-r3" \
    --out-dir "$WORK/traces" --force
fi

# Pack: big files one by one (gzip'ed; split in 15 MiB parts when larger), the rest in one tar.gz.
step "pack into $OUT"
rm -f "$WORK/traces/"*.dsocr-cache.duckdb*
slots=6   # 8 files: log.txt + results.tar.gz + up to 6 big files / parts
big() {   # big FILE: gzip unless already compressed, then split if needed; skip if no slots are left
  local f=$1 g
  [ -f "$f" ] || return 0
  case "$f" in *.gz|*.nsys-rep) g=$f ;; *) gzip -6 -k -f "$f" && g="$f.gz" ;; esac
  local size parts
  size=$(stat -c %s "$g"); parts=$(( (size + 15728639) / 15728640 ))
  if (( parts > slots )); then echo "pack: NOT copied $g ($size bytes, $parts parts, $slots slots left)"; return 0; fi
  if (( parts == 1 )); then cp "$g" "$OUT/"; else split -b 15M -d "$g" "$OUT/$(basename "$g").part"; fi
  slots=$(( slots - parts ))
  echo "pack: $(basename "$g") $size bytes in $parts file(s)"
  [ "$g" != "$f" ] && rm -f "$g"
  mv "$f" "$f.packed"
}
big "$WORK/traces/$NAME.sqlite"
big "$WORK/traces/$NAME.pt.trace.json.gz"
big "$WORK/traces/$NAME-r3.sqlite"
big "$WORK/traces/$NAME.nsys-rep"
rm -rf "$WORK/session-out/images"
tar -czf "$OUT/results.tar.gz" -C "$WORK" --exclude='*.packed' traces ref session-out overhead.json 2>/dev/null \
  || tar -czf "$OUT/results.tar.gz" -C "$WORK" --exclude='*.packed' .
ls -la "$OUT"; tar -tzvf "$OUT/results.tar.gz"
echo "split parts: cat NAME.part00 NAME.part01 ... > NAME"
step "done"
}
main 2>&1 | tee -a "$OUT/log.txt"
