#!/usr/bin/env bash
# Issue 17 (model side) on a GPU machine: the fast decode engine against the faithful one, in one run.
#
#   bash benchmarks/engine_gpu.sh [OUT_DIR]        # from the repository root, after pip install --no-deps -e .
#
# 1. the GPU-marked tests of tests/test_fast.py, if pytest is installed (the CUDA-graph engine gives the
#    faithful engine's greedy tokens);
# 2. benchmarks/engine_check.py: official preset, bf16, seeded random weights, sample page, Gundam --
#    teacher-forced agreement over 256 steps, then untraced ms/token of both engines and their ratio;
# 3. `make trace ENGINE=fast` end to end (nsys, export, PyTorch profiler pass, stage table), and the
#    faithful engine under nsys on the same page, 256 tokens, as the baseline of the same run;
# 4. per decode step under nsys, both engines: NVIDIA's `nsys stats --report nvtx_sum` (on copies) and,
#    where the analysis side is installed, dsocr-analyze: wall, busy, kernels, launches per step, the
#    diff of the two captures and the fast engine's top decode kernels.
# Every step runs even if an earlier one fails; a failed step says so, and the exit status is 1.
# Outputs go to OUT_DIR (default traces/issue17) and are replaced on a rerun.
set -uo pipefail
out=${1:-traces/issue17}
mkdir -p "$out"
failed=()
step() {
    local title=$1; shift
    echo; echo "=== $title"; echo "+ $*"
    "$@" || { echo "FAILED ($?): $title"; failed+=("$title"); }
}

python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
if python -c 'import pytest' 2>/dev/null; then
    step "GPU tests of the fast engine" python -m pytest -q -m gpu tests/test_fast.py
else
    echo "(pytest is not installed: GPU tests skipped)"
fi
step "engine check (agreement, untraced speed)" python benchmarks/engine_check.py --out "$out/engine_check.json" --force
step "make trace ENGINE=fast" make trace ENGINE=fast NAME=fast ARGS="--out-dir $out --force"
step "faithful engine under nsys (baseline)" dsocr-trace --engine faithful --name faithful --out-dir "$out" --force \
    --random-weights --max-new-tokens 256 --no-torch-profiler --no-analyze

nsys=$(python -c 'from dsocr_perf.launch.nsys import find_nsys; print(find_nsys(None).path)')
for engine in faithful fast; do
    cp "$out/$engine.sqlite" "$out/.$engine.stats.sqlite" &&
        step "nsys stats nvtx_sum: $engine engine" \
            "$nsys" stats --report nvtx_sum --format csv "$out/.$engine.stats.sqlite"
    rm -f "$out/.$engine.stats.sqlite"
done

per_step="SELECT count(*) AS steps, round(median(cpu_ns) / 1e6, 3) AS median_wall_ms,
    round(avg(cpu_ns) / 1e6, 3) AS mean_wall_ms, round(median(busy_ns) / 1e6, 3) AS median_busy_ms,
    round(avg(kernels), 1) AS kernels, round(avg(launches), 1) AS launches
  FROM range_stats WHERE name LIKE '%decode_step'"
if python -c 'import duckdb' 2>/dev/null; then
    for engine in faithful fast; do
        step "decode steps under nsys: $engine engine" dsocr-analyze sql "$out/$engine.sqlite" "$per_step"
    done
    step "diff faithful -> fast" dsocr-analyze diff "$out/faithful.sqlite" "$out/fast.sqlite" --top 10
    step "top decode kernels, fast engine" dsocr-analyze kernels "$out/fast.sqlite" --range decode --top 15
else
    echo "(the analysis side is not installed here: run dsocr-analyze on $out/*.sqlite elsewhere)"
fi

echo
if ((${#failed[@]})); then
    printf 'failed steps: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps passed; outputs in $out"
