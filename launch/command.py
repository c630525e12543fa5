"""The command lines the launcher runs: nsys profile/export and the child session process.

Every nsys option is written `--name=value`, so the application command starts at the first
argument without a leading dash.
"""
from __future__ import annotations

import sys
from pathlib import Path

# What `nsys profile` records, and why each option is there (learnt on the GPU machine):
NSYS_PROFILE_OPTIONS = (
    "--trace=cuda,nvtx",                 # CUDA API + GPU activity, and the stage ranges
    "--cuda-graph-trace=node",           # kernels replayed from CUDA graphs keep their own rows
    "--capture-range=cudaProfilerApi",   # only between cudaProfilerStart/Stop (after warm-up)
    "--capture-range-end=stop",          # one capture range, then the app finishes uncaptured
    "--sample=none",                     # no CPU sampling: small reports
    "--cpuctxsw=none",                   # no context-switch trace
    "--force-overwrite=true",            # the hidden temporary name only; finals are guarded
)


def child_command(phase: str, spec_path: Path, python: str | None = None) -> list[str]:
    """The session process: `python -m dsocr_perf.launch.child --phase nsys|torch|ncu --spec SPEC.json`."""
    return [python or sys.executable, "-m", "dsocr_perf.launch.child", "--phase", phase, "--spec", str(spec_path)]


def nsys_profile_command(nsys: Path, report: Path, app: list[str], extra: list[str] = ()) -> list[str]:
    """nsys writes REPORT (named in full, .nsys-rep included), via REPORT with suffix .qdstrm. `extra`: options
    that depend on this nsys and GPU (GPU metrics, --pytorch), written `--name=value` too."""
    return [str(nsys), "profile", *NSYS_PROFILE_OPTIONS, *extra, f"--output={report}", *app]


def nsys_export_command(nsys: Path, report: Path, output: Path, kind: str = "sqlite") -> list[str]:
    """`kind`: sqlite (one file) or parquetdir (a folder of Parquet files, one per table; nsys >= 2023.4)."""
    return [str(nsys), "export", f"--type={kind}", "--force-overwrite=true", f"--output={output}", str(report)]


# The first nsys whose `export` writes parquetdir (the same tables as the SQLite export, one Parquet file each).
PARQUET_EXPORT_SINCE = (2023, 4)


def nsys_stats_command(nsys: Path, sqlite: Path, prefix: Path) -> list[str]:
    """NVIDIA's reference reports (run on a copy: nsys stats adds indexes to the file it reads)."""
    return [str(nsys), "stats", "--report=nvtx_kern_sum,nvtx_gpu_proj_sum,nvtx_sum,cuda_gpu_kern_sum",
            "--format=csv", f"--output={prefix}", str(sqlite)]
