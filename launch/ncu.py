"""Nsight Compute (`ncu`) for the DeepSeek-OCR session: where it is, what it measures, the command lines, what its
output means, and what a run costs. The facts below were measured on our H100 runs (README, "Nsight Compute").

Three kinds of run, each one metric pass over the same child session as `dsocr-trace`:
    ranges   application-range replay: one CSV row per stage range (sam, clip, projector per view batch,
             llm_prefill, every decode_step) with its metrics summed over the kernels inside. The default.
    kernels  kernel replay: one row per kernel, for vision, prefill and the sampled decode steps.
    simt     kernel replay of the FP32/FP16 instruction counts (SIMT FLOPs); SASS metrics are refused in
             application-range mode.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dsocr_perf.dsocr.stages import CLIP, DECODE_STEP, DOMAIN, LLM_PREFILL, PROJECTOR, SAM
from dsocr_perf.launch.programs import Program, SearchOrder, find_program

NCU_SEARCH = SearchOrder("ncu", "--ncu-path", "NCU", ("usr/local/cuda*/bin/ncu", "opt/nvidia/nsight-compute/*/ncu"))

STAGES = (SAM, CLIP, PROJECTOR, LLM_PREFILL, DECODE_STEP)
VISION = (SAM, CLIP, PROJECTOR)
# A push/pop range in domain dsocr is `dsocr@NAME/`: without the trailing '/' (or in the default domain, or as a
# regex) ncu silently profiles nothing. Several --nvtx-include combine with OR.
NVTX_FILTER = tuple(opt for s in STAGES for opt in ("--nvtx-include", f"{DOMAIN}@{s}/"))

# One pass each (measured): time, tensor-pipe work (bf16 in, fp32 accumulate: 2 FLOPs per multiply-add, padding
# included), DRAM bytes. L2 bytes (lts__t_bytes.sum) fit the kernel-replay pass; the application-range run was
# measured without them and DRAM bytes are what the stage roofline needs, so the ranges run leaves them out
# (--ncu-metrics adds them back to try).
RANGE_METRICS = ("gpu__time_duration.sum", "sm__ops_path_tensor_src_bf16_dst_fp32.sum", "dram__bytes_read.sum",
                 "dram__bytes_write.sum")
KERNEL_METRICS = (*RANGE_METRICS, "lts__t_bytes.sum")
# FP32 and FP16 instructions executed (predicated on); FLOPs = 2 x fma + add + mul. PyTorch's bf16 elementwise
# math runs as FP32 instructions.
SIMT_METRICS = tuple(f"smsp__sass_thread_inst_executed_op_{op}_pred_on.sum"
                     for op in ("ffma", "fadd", "fmul", "hfma", "hadd", "hmul"))


@dataclass(frozen=True)
class NcuRun:
    key: str                 # ranges | kernels | simt; output kinds are KEY_csv, KEY_rep
    replay: str              # app-range | kernel
    metrics: tuple[str, ...]
    purpose: str


def find_ncu(explicit: str | None = None, env: dict | None = None, root: str = "/") -> Program:
    return find_program(NCU_SEARCH, explicit, env, root, title="Nsight Compute (ncu)",
                        advice="Install Nsight Compute (it comes with the CUDA toolkit) or pass "
                               "--ncu-path /path/to/ncu")


def profile_command(ncu: Path, run: NcuRun, report: Path, app: list[str]) -> list[str]:
    if run.replay == "app-range":
        # --range-filter yes:1: keeps the measured page (warm-up pages run before cudaProfilerStart); this mode
        # refuses --profile-from-start off.
        mode = ["--replay-mode", "app-range", "--range-filter", "yes:1:"]
    else:
        # The child opens the profiler (cudaProfilerStart/Stop) around vision, prefill and the sampled decode steps.
        mode = ["--replay-mode", "kernel", "--profile-from-start", "off"]
    return [str(ncu), *mode, "--nvtx", *NVTX_FILTER,
            "--clock-control", "none",          # the GPU's own clocks, as under nsys (the default locks base clocks)
            "--metrics", ",".join(run.metrics),
            "--export", str(report), "--force-overwrite", *app]


def import_command(ncu: Path, report: Path) -> list[str]:
    """One CSV row per profiled kernel or range, a units row under the header, values in base units."""
    return [str(ncu), "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"]


# --- what ncu's output means -------------------------------------------------------------------------------------

PERMISSION = ("ncu may not read this GPU's performance counters (ERR_NVGPUCTRPERM): run it as root, or have an "
              "administrator allow profiling for all users (nvidia kernel module option "
              "NVreg_RestrictProfilingToAdminUsers=0, then reload the driver); in a container, start it with "
              "--cap-add=SYS_ADMIN. See https://developer.nvidia.com/ERR_NVGPUCTRPERM")


def failure(output: str, version: str) -> str | None:
    """One line on why an ncu run failed, from its output; None when it names no reason."""
    if "ERR_NVGPUCTRPERM" in output:
        return PERMISSION
    errors = [line.split("==ERROR==", 1)[1].strip() for line in output.splitlines() if "==ERROR==" in line]
    for text in errors:
        if re.search(r"not supported|unsupported", text, re.IGNORECASE) and \
                re.search(r"device|gpu|architecture|chip", text, re.IGNORECASE):
            return (f"ncu {version} cannot profile this GPU ({text}); use a Nsight Compute release that supports "
                    "it (nsys captures still work)")
        if re.search(r"metric", text, re.IGNORECASE):
            return f"ncu refused a metric ({text}); check --ncu-metrics against `ncu --query-metrics`"
    return f"ncu: {errors[0]}" if errors else None


def read_raw_csv(text: str) -> tuple[list[str], list[list[str]]]:
    """(header, data rows) of `ncu --import ... --csv --page raw --print-units base`; ncu's own `==` lines and the
    units row (no ID) are dropped."""
    rows = list(csv.reader(line for line in text.splitlines() if not line.startswith("==")))
    if not rows:
        return [], []
    header = rows[0]
    id_col = header.index("ID") if "ID" in header else 0
    return header, [r for r in rows[1:] if len(r) > id_col and r[id_col].strip().isdigit()]


def row_stage(header: list[str], row: list[str]) -> str | None:
    """The innermost stage named in a row's NVTX stack (the `thread Domain:Push/Pop_Range:...` column), or in its
    range/kernel name column."""
    for wanted in ("Push/Pop_Range", "Range Name", "Kernel Name"):
        for h, value in zip(header, row, strict=False):   # a short row lacks the last cells
            if wanted in h:
                found = [t for t in re.findall(r"[A-Za-z_]+", value) if t in STAGES]
                if found:
                    return found[-1]
    return None


def stage_counts(header: list[str], rows: list[list[str]]) -> Counter:
    """Rows per stage; rows whose stage cannot be read count under None."""
    return Counter(row_stage(header, r) for r in rows)


def expected_ranges(manifest: dict) -> Counter:
    """Stage ranges one application-range run must profile: per measured page, sam, clip and projector once per view
    batch, llm_prefill once, decode_step once per generated token."""
    want: Counter = Counter()
    for page in manifest["pages"]:
        w = page["workload"]
        for stage in VISION:
            want[stage] += len(w["views"])
        want[LLM_PREFILL] += 1
        want[DECODE_STEP] += w["generated_tokens"]
    return want


def missing_ranges(got: Counter, want: Counter) -> str | None:
    """'sam 1 of 2, decode_step 30 of 32' when fewer rows than expected; None when complete. Rows without a
    readable stage are compared by total only."""
    total_got, total_want = sum(got.values()), sum(want.values())
    if got.get(None) == total_got:   # no row names its stage: the total is all there is to compare
        return None if total_got >= total_want else f"{total_got} of {total_want} ranges"
    short = [f"{s} {got.get(s, 0)} of {n}" for s, n in want.items() if got.get(s, 0) < n]
    return ", ".join(short) or None


# --- what a run costs --------------------------------------------------------------------------------------------

# Measured on the H100, one metric pass: kernel replay 25 ms per vision kernel, 41 ms per
# decode kernel, plus 15-20 s per run (ncu, model load, warm-up); llm_prefill is taken at the vision rate.
KERNEL_SECONDS = {SAM: 0.025, CLIP: 0.025, PROJECTOR: 0.025, LLM_PREFILL: 0.025, DECODE_STEP: 0.041}
KERNEL_RUN_FIXED_S = 18.0
# Application-range replay profiled a 2-token page (9 ranges) in 29 s; how that splits between fixed cost and
# ranges is a guess until more runs are timed (NAME.ncu.json keeps estimate and measurement side by side).
RANGE_RUN_FIXED_S = 20.0
RANGE_SECONDS = 1.0
# Kernels per stage instance on a Gundam 2x3 page, official preset (the README's H100 capture): the rule of
# thumb when no nsys trace of the same workload lies beside the output.
TYPICAL_KERNELS = {SAM: 376, CLIP: 294, PROJECTOR: 2, LLM_PREFILL: 2868, DECODE_STEP: 1080}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    items: int       # ranges or kernels ncu will profile
    unit: str        # "ranges" | "kernels"
    basis: str       # where the kernel counts came from

    def text(self) -> str:
        return f"~{self.seconds:.0f} s for {self.items:,} {self.unit} ({self.basis})"


def estimate(run: NcuRun, view_batches: list[int], sampled_steps: int, total_steps: int,
             kernels_per_instance: dict[str, float], basis: str) -> Estimate:
    """view_batches: view batches of each measured page; kernels_per_instance: stage -> kernels of one instance."""
    if run.replay == "app-range":
        ranges = sum(3 * b + 1 + total_steps for b in view_batches)
        return Estimate(RANGE_RUN_FIXED_S + RANGE_SECONDS * ranges, ranges, "ranges", "one pass; rule of thumb")
    kernels = seconds = 0.0
    for b in view_batches:
        for stage, instances in ((SAM, b), (CLIP, b), (PROJECTOR, b), (LLM_PREFILL, 1), (DECODE_STEP, sampled_steps)):
            n = kernels_per_instance[stage] * instances
            kernels += n
            seconds += n * KERNEL_SECONDS[stage]
    return Estimate(KERNEL_RUN_FIXED_S + seconds, round(kernels), "kernels", basis)
