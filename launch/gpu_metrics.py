"""GPU metrics sampling in the nsys capture (`nsys profile --gpu-metrics-devices=all`), on when the machine permits.

Two cheap checks before the capture, then one fallback:
1. `nsys profile --help` must list the option (`--gpu-metrics-devices`; nsys before 2023.4 spelt it
   `--gpu-metrics-device`);
2. `nsys profile --gpu-metrics-devices=help` lists the GPUs that can be sampled, without starting a session
   (about a second); a list without a GPU that says why (not supported, no permission) turns sampling off with
   that reason; an answer not understood leaves it on, for step 3 to settle;
3. a capture that still fails on GPU metrics (counters taken by another profiler, say) fails before the session
   gets far, since nsys sets sampling up when it starts: `capture_with_fallback` then captures once more
   without them. A failure after the session wrote its manifest is not retried (it would cost a whole capture).

Whether it was on, and if not why, is `capture.gpu_metrics` in the manifest:
    {"enabled": true, "devices": "all", "frequency_hz": 2000}
    {"enabled": false, "reason": "turned off with --no-gpu-metrics"}
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.nsys import has_option

# 2 kHz, not nsys's 10 kHz default: a sample is an average over its 0.5 ms period, and stage-level shares need
# many samples per stage, not fine time resolution. On the H100 example (README) the shortest stage worth a
# share, CLIP on one view batch, spans ~14 ms (~28 samples at 2 kHz) and one decode step ~30 ms (~60); the
# decode loop gets thousands. The export holds one row per metric per sample: 22 metrics x 2,000 = 44k rows per
# captured second instead of 220k, so a 256-token page adds ~0.4 M rows instead of ~2 M.
DEFAULT_FREQUENCY_HZ = 2000
OPTION = "--gpu-metrics-devices"
OLD_OPTION = "--gpu-metrics-device"   # the spelling of nsys 2023.3 and older
# Words in nsys's output that mean GPU metrics themselves failed (not the session).
FAILURE_WORDS = re.compile(r"gpu.?metric|NVGPUCTRPERM|privilege|permission|performance counter", re.IGNORECASE)
# Words in the device list's answer that say no GPU can be sampled here.
NO_GPU_WORDS = re.compile(r"not supported|unsupported|none of|no supported|no gpu|NVGPUCTRPERM|privilege|permission",
                          re.IGNORECASE)


@dataclass(frozen=True)
class GpuMetrics:
    enabled: bool
    reason: str = ""                         # why it is off
    option: str = OPTION
    frequency_hz: int = DEFAULT_FREQUENCY_HZ

    def nsys_options(self) -> list[str]:
        if not self.enabled:
            return []
        return [f"{self.option}=all", f"--gpu-metrics-frequency={self.frequency_hz}"]

    def record(self) -> dict:
        """What the manifest says (capture.gpu_metrics)."""
        if self.enabled:
            return {"enabled": True, "devices": "all", "frequency_hz": self.frequency_hz}
        return {"enabled": False, "reason": self.reason}

    def off(self, reason: str) -> GpuMetrics:
        return GpuMetrics(False, reason, self.option, self.frequency_hz)


def add_arguments(ap) -> None:
    ap.add_argument("--no-gpu-metrics", action="store_true",
                    help="do not sample GPU metrics (SM, tensor, DRAM activity) in the nsys capture; by default "
                         "they are sampled when this nsys and GPU permit it")
    ap.add_argument("--gpu-metrics-frequency", type=int, default=DEFAULT_FREQUENCY_HZ, metavar="HZ",
                    help=f"GPU metrics samples per second (default {DEFAULT_FREQUENCY_HZ}; nsys accepts 10 to 200000)")


def devices_help(nsys: Path, option: str) -> str:
    try:
        out = subprocess.run([str(nsys), "profile", f"{option}=help"], capture_output=True, text=True, timeout=60,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(could not run it: {e})"
    return out.stdout + out.stderr


def lists_a_gpu(devices_text: str) -> bool:
    """The help lists sampleable GPUs one per line as '<index>: <name> ...'."""
    return re.search(r"^\s*\d+\s*:\s*\S", devices_text, flags=re.MULTILINE) is not None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def probe(nsys: Path, profile_help: str, args) -> GpuMetrics:
    """Whether to sample GPU metrics in this capture, and why not."""
    metrics = GpuMetrics(True, frequency_hz=args.gpu_metrics_frequency)
    if args.no_gpu_metrics:
        return metrics.off("turned off with --no-gpu-metrics")
    if has_option(profile_help, OPTION):
        option = OPTION
    elif has_option(profile_help, OLD_OPTION):
        option = OLD_OPTION
    else:
        return metrics.off(f"this nsys does not list {OPTION} in `nsys profile --help`")
    metrics = GpuMetrics(True, option=option, frequency_hz=args.gpu_metrics_frequency)
    devices = devices_help(nsys, option)
    if not lists_a_gpu(devices) and NO_GPU_WORDS.search(devices):
        return metrics.off(f"`nsys profile {option}=help` lists no GPU it can sample: {last_line(devices)}")
    return metrics


def capture_with_fallback(capture, metrics: GpuMetrics, progress, session_finished) -> GpuMetrics:
    """`capture(metrics)` runs the nsys pass; if it fails on GPU metrics before the session finished
    (`session_finished()` is false), run it again without them. Returns what the capture that succeeded used."""
    try:
        capture(metrics)
        return metrics
    except LaunchError as e:
        if not metrics.enabled or session_finished() or not FAILURE_WORDS.search(str(e)):
            raise
        reason = f"the capture with GPU metrics failed: {str(e).split('last output: ')[-1]}"
    progress.line(f"GPU metrics: {reason}; capturing again without them (--no-gpu-metrics skips this try)")
    metrics = metrics.off(reason)
    capture(metrics)
    return metrics
