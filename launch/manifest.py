"""The workload manifest (schema dsocr-manifest/1): what ran, on what, so a trace explains itself.

Built by the child process after the measured pages (it knows the generated tokens), emitted as
one NVTX mark in domain `dsocr` inside the capture range, and written to `traces/NAME.json`.

    workload     Workload.to_dict() of the first measured page + generated_tokens, decode_kv_lengths
    pages        one entry per measured request: request, page, repeat, image, workload
    model        preset, config, weights ('random' or the folder), seed, dtype, attention, engine
    environment  gpu_name, sm_count, sm_clock_mhz, mem_clock_mhz (max clocks, NVML), the clocks at
                 capture time, driver, cuda, torch, nsys, command, time_utc, hostname
    capture      warmup_pages, measured_pages, repeats, max_new_tokens, ignore_eos, mode, profiler
"""
from __future__ import annotations

import datetime as dt
import platform

from dsocr_perf.dsocr.stages import MANIFEST_SCHEMA

TOP_LEVEL_KEYS = ("schema", "workload", "pages", "model", "environment", "capture")
ENVIRONMENT_KEYS = ("gpu_name", "sm_count", "sm_clock_mhz", "mem_clock_mhz", "driver", "cuda", "torch",
                    "nsys", "command", "time_utc")


def page_workload(result) -> dict:
    return result.workload.to_dict() | {"generated_tokens": result.generated_tokens,
                                        "decode_kv_lengths": list(result.decode_kv_lengths)}


def attention_implementation(device_type: str) -> str:
    """The attention kernels the session asks for (dsocr/decoder.py, dsocr/vision.py)."""
    try:
        from dsocr_perf.dsocr.decoder import DECODER_SDPA_BACKENDS
        backends = "/".join(b.name.lower() for b in DECODER_SDPA_BACKENDS)
    except ImportError:
        backends = "default"
    if device_type == "cuda":
        return f"sdpa (decoder backends {backends}; vision default backends)"
    return "sdpa (cpu)"


def gpu_environment(device_index: int = 0) -> dict:
    """GPU facts from NVML (nvidia-ml-py) and torch; empty values where neither can tell."""
    env: dict = {"gpu_name": None, "sm_count": None, "sm_clock_mhz": None, "mem_clock_mhz": None,
                 "sm_clock_now_mhz": None, "mem_clock_now_mhz": None, "driver": None, "cuda_driver": None,
                 "gpu_uuid": None, "gpu_memory_bytes": None, "compute_capability": None}
    try:
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device_index)
            env.update(gpu_name=props.name, sm_count=props.multi_processor_count,
                       gpu_memory_bytes=props.total_memory, compute_capability=f"{props.major}.{props.minor}")
            uuid = getattr(props, "uuid", None)
            env["gpu_uuid"] = f"GPU-{uuid}" if uuid is not None else None
    except Exception as e:   # a broken CUDA setup must not lose the capture; say so in the manifest
        env["gpu_error"] = f"torch: {e}"
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            handle = None
            if env["gpu_uuid"]:
                try:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(env["gpu_uuid"])
                except Exception:   # uuid formats differ across torch versions: fall back to the index
                    handle = None
            if handle is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            name = pynvml.nvmlDeviceGetName(handle)
            env["gpu_name"] = name.decode() if isinstance(name, bytes) else name
            env["sm_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
            env["mem_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            env["sm_clock_now_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
            env["mem_clock_now_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            driver = pynvml.nvmlSystemGetDriverVersion()
            env["driver"] = driver.decode() if isinstance(driver, bytes) else driver
            cuda_driver = pynvml.nvmlSystemGetCudaDriverVersion()
            env["cuda_driver"] = f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}"
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:   # no NVML (CPU machine, no driver): keep what torch said
        env["nvml_error"] = str(e).strip() or type(e).__name__
    return env


def environment(nsys_version: str | None, command: str, device_type: str) -> dict:
    import torch

    env = gpu_environment() if device_type == "cuda" else {
        "gpu_name": None, "sm_count": None, "sm_clock_mhz": None, "mem_clock_mhz": None, "driver": None}
    return env | {
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "nsys": nsys_version,
        "command": command,
        "time_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": platform.node(),
        "python": platform.python_version(),
    }


def build_manifest(session, measured: list[dict], *, environment: dict, capture: dict) -> dict:
    """measured: one dict per request {request, page, repeat, image: PageImage dict, result: PageResult}."""
    if not measured:
        raise ValueError("a manifest needs at least one measured page")
    first = measured[0]["result"]
    return {
        "schema": MANIFEST_SCHEMA,
        "workload": page_workload(first),
        "pages": [{"request": m["request"], "page": m["page"], "repeat": m["repeat"], "image": m["image"],
                   "workload": page_workload(m["result"]),
                   "host_times_s": {k: round(v, 6) for k, v in m["result"].host_times_s.items()}}
                  for m in measured],
        "model": {
            "preset": session.config.name,
            "config": session.config.to_dict(),
            "weights": session.weights_source,
            "seed": session.seed,
            "dtype": str(session.dtype).removeprefix("torch."),
            "attention": attention_implementation(session.device.type),
            "device": str(session.device),
            "engine": session.engine,
        },
        "environment": environment,
        "capture": capture,
    }


def check_manifest(m: dict) -> list[str]:
    """Problems with a manifest's shape (empty list when it is complete)."""
    problems = [f"missing key {k!r}" for k in TOP_LEVEL_KEYS if k not in m]
    if m.get("schema") != MANIFEST_SCHEMA:
        problems.append(f"schema is {m.get('schema')!r}, not {MANIFEST_SCHEMA!r}")
    problems += [f"environment lacks {k!r}" for k in ENVIRONMENT_KEYS if k not in m.get("environment", {})]
    for i, page in enumerate(m.get("pages", [])):
        for k in ("request", "image", "workload"):
            if k not in page:
                problems.append(f"pages[{i}] lacks {k!r}")
    return problems


def host_summary(m: dict) -> list[str]:
    """Per-request host wall times of the measured pages (nsys pass), with tokens/s and pages/s.

    Host times include the profiler's overhead; GPU time per stage comes from dsocr-analyze."""
    import statistics

    pages = m.get("pages", [])
    totals = [p["host_times_s"]["total"] for p in pages if "total" in p.get("host_times_s", {})]
    if not totals:
        return []
    tokens = sum(p["workload"]["generated_tokens"] for p in pages)
    spread = f" (std {statistics.stdev(totals) * 1000:.1f}, min {min(totals) * 1000:.1f}, " \
             f"max {max(totals) * 1000:.1f})" if len(totals) > 1 else ""
    lines = [f"{len(totals)} measured request(s) under nsys: mean {statistics.mean(totals) * 1000:.1f} ms a page"
             f"{spread}; {tokens / sum(totals):.1f} generated tokens/s, {len(totals) / sum(totals):.3f} pages/s"]
    for p in pages:
        t = p["host_times_s"]
        stages = ", ".join(f"{k} {v * 1000:.1f}" for k, v in t.items() if k != "total")
        lines.append(f"  request {p['request']} (page {p['page']}, repeat {p['repeat']}): "
                     f"{t.get('total', 0) * 1000:.1f} ms ({stages} ms)")
    return lines
