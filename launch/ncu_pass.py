"""`dsocr-trace --ncu`: the same child session as the nsys capture, under Nsight Compute.

Outputs in --out-dir, written under hidden temporary names and renamed at the end (NAME.partial.* on failure,
never over an existing file without --force):
    NAME.ncu.csv               ranges run: one row per stage range of the measured page (application-range replay)
    NAME.ncu-kernels.csv       --ncu-kernels: one row per kernel of vision, prefill and the sampled decode steps
    NAME.ncu-simt.csv          --ncu-simt: FP32/FP16 instruction counts per kernel (SIMT FLOPs), same kernels
    NAME.ncu.json              what was run and how: mode, metrics, sampled steps, scaling model, ncu version,
                               command lines, estimated and measured cost, the session's manifest
    NAME.ncu-rep, NAME.ncu-kernels.ncu-rep, NAME.ncu-simt.ncu-rep   only with --keep-ncu-rep (60-170 KB a kernel)
A run that profiled nothing, or fewer stage ranges than the page has, is an error.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

from dsocr_perf.launch import command, ncu
from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.images import resolve_pages
from dsocr_perf.launch.kernel_counts import kernels_per_instance
from dsocr_perf.launch.nsys import last_lines
from dsocr_perf.launch.runner import Outputs, Progress, check_gpu, refuse_existing, stopped, stream

SCHEMA = "dsocr-ncu/1"
SUFFIXES = {"ranges_csv": ".ncu.csv", "ranges_rep": ".ncu-rep",
            "kernels_csv": ".ncu-kernels.csv", "kernels_rep": ".ncu-kernels.ncu-rep",
            "simt_csv": ".ncu-simt.csv", "simt_rep": ".ncu-simt.ncu-rep",
            "json": ".ncu.json",
            "manifest": ".ncu-manifest.json"}   # the child's manifest: read into NAME.ncu.json, never kept
RUNS = {"ranges": ncu.NcuRun("ranges", "app-range", ncu.RANGE_METRICS, "stage totals"),
        "kernels": ncu.NcuRun("kernels", "kernel", ncu.KERNEL_METRICS, "per-kernel detail"),
        "simt": ncu.NcuRun("simt", "kernel", ncu.SIMT_METRICS, "SIMT FLOPs (FP32/FP16 instructions)")}
CACHE_CONTROL = ("all (ncu's default): caches are flushed before each profiled kernel or range, so DRAM bytes "
                 "are an upper bound for kernels that run back to back")


def add_arguments(ap) -> None:
    g = ap.add_argument_group("Nsight Compute (instead of the nsys capture)")
    g.add_argument("--ncu", action="store_true",
                   help="profile the session under Nsight Compute: hardware-counted time, tensor FLOPs and DRAM "
                        "bytes per stage range (application-range replay, one pass) -> NAME.ncu.csv, NAME.ncu.json")
    g.add_argument("--ncu-kernels", action="store_true",
                   help="also a kernel-replay run (implies --ncu): one row per kernel of vision, prefill and the "
                        "sampled decode steps -> NAME.ncu-kernels.csv; ~25 ms a vision kernel, ~41 ms a decode "
                        "kernel (a decode step is ~1,080 kernels)")
    g.add_argument("--ncu-simt", action="store_true",
                   help="also a kernel-replay run of FP32/FP16 instruction counts, SIMT FLOPs (implies --ncu) "
                        "-> NAME.ncu-simt.csv")
    g.add_argument("--ncu-decode-steps", default="first,last", metavar="STEPS",
                   help="decode steps the kernel-replay runs profile: comma-separated step numbers, 'first', "
                        "'last' or 'all' (default first,last; the ranges run always has every step)")
    g.add_argument("--ncu-metrics", metavar="LIST",
                   help=f"metrics of the ranges run (default {','.join(ncu.RANGE_METRICS)})")
    g.add_argument("--keep-ncu-rep", action="store_true", help="keep ncu's own reports (.ncu-rep) beside the CSVs")
    g.add_argument("--ncu-path", metavar="PATH", help="the ncu program to use")


def check_arguments(ap, args) -> None:
    args.ncu = args.ncu or args.ncu_kernels or args.ncu_simt
    if args.ncu and (args.ncu_kernels or args.ncu_simt) and getattr(args, "engine", "faithful") != "faithful":
        ap.error("--ncu-kernels and --ncu-simt sample decode steps of the faithful engine; drop --engine fast "
                 "(plain --ncu profiles either engine)")
    if args.ncu:
        try:
            args.ncu_steps = sampled_steps(args.ncu_decode_steps, args.max_new_tokens)
        except ValueError as e:
            ap.error(f"--ncu-decode-steps {args.ncu_decode_steps!r}: {e}")


def sampled_steps(text: str, max_new_tokens: int) -> list[int]:
    """'first,last' -> [0, N-1]; 'all' -> every step; '0,16,31' as given (each below --max-new-tokens)."""
    if text.strip() == "all":
        return list(range(max_new_tokens))
    steps = set()
    for word in filter(None, (w.strip() for w in text.split(","))):
        step = {"first": 0, "last": max_new_tokens - 1}.get(word)
        if step is None:
            if not re.fullmatch(r"\d+", word):
                raise ValueError(f"{word!r} is not a step number, 'first', 'last' or 'all'")
            step = int(word)
        if step >= max_new_tokens:
            raise ValueError(f"step {step} does not exist with --max-new-tokens {max_new_tokens} (steps 0-"
                             f"{max_new_tokens - 1})")
        steps.add(step)
    if not steps:
        raise ValueError("name at least one step")
    return sorted(steps)


def planned_runs(args) -> list[ncu.NcuRun]:
    ranges = RUNS["ranges"]
    if args.ncu_metrics:
        ranges = ncu.NcuRun("ranges", "app-range", tuple(m.strip() for m in args.ncu_metrics.split(",") if m.strip()),
                            ranges.purpose)
    return [ranges] + [RUNS[k] for k in ("kernels", "simt") if getattr(args, f"ncu_{k}")]


def view_batches(pages, args) -> list[int]:
    from dsocr_perf.dsocr.workload import workload_shapes
    return [len(workload_shapes(p.width, p.height, args.mode, 0, args.max_tiles).views) for p in pages]


def kernel_counts(args, batches: list[int]) -> tuple[dict[str, float], str]:
    """Kernels per stage instance: from NAME.sqlite beside the outputs when its manifest (NAME.json) shows the same
    preset and view layout, else the rule of thumb."""
    out = Path(args.out_dir)
    found = kernels_per_instance(out / f"{args.name}.sqlite", out / f"{args.name}.json", args.preset, batches[0])
    if found:
        return found, f"kernel counts from {out / (args.name + '.sqlite')}"
    return dict(ncu.TYPICAL_KERNELS), "rule of thumb: kernel counts of a Gundam 2x3 page, official preset"


class ProfiledCounter:
    """Reads ncu's output while it runs: counts `==PROF== Profiling` lines and, when there are many, shows a
    progress line every tenth instead of each; keeps every `==ERROR==` line (they may scroll out of the tail)."""

    def __init__(self, progress: Progress, expected: int, unit: str, started: float):
        self.progress, self.expected, self.unit, self.started = progress, expected, unit, started
        self.count, self.errors, self.next_report = 0, [], max(1, expected // 10)

    def watch(self, line: str):
        self.progress.timeline.watch(line)
        if "==ERROR==" in line:
            self.errors.append(line)
        if not line.startswith("==PROF== Profiling"):
            return None
        self.count += 1
        if self.expected <= 60:
            return None
        if self.count >= self.next_report:
            self.next_report += max(1, self.expected // 10)
            self.progress.line(f"ncu: {self.count:,} of ~{self.expected:,} {self.unit} profiled, "
                               f"{time.perf_counter() - self.started:.0f} s")
        return False


def export_csv(ncu_path: Path, report: Path, csv_path: Path) -> str:
    try:
        out = subprocess.run(ncu.import_command(ncu_path, report), capture_output=True, text=True, timeout=1800,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"ncu --import {report} failed: {e}") from None
    if out.returncode != 0:
        raise LaunchError(f"ncu --import {report} failed (exit {out.returncode}): "
                          f"{last_lines(out.stderr + out.stdout, 3)}")
    csv_path.write_text(out.stdout)
    return out.stdout


def profile_once(tool, run: ncu.NcuRun, outputs: Outputs, progress: Progress, est: ncu.Estimate, args) -> dict:
    report, csv_path = outputs.tmp[f"{run.key}_rep"], outputs.tmp[f"{run.key}_csv"]
    cmd = ncu.profile_command(tool.path, run, report, command.child_command("ncu", outputs.spec))
    progress.line("ncu command: " + shlex.join(cmd))
    progress.line(f"estimate: {est.text()}")
    started = time.perf_counter()
    counter = ProfiledCounter(progress, est.items, est.unit, started)
    outputs.tmp["manifest"].unlink(missing_ok=True)
    with progress.phase(f"ncu {run.key} run ({run.replay} replay: {run.purpose})"):
        code, tail, error = stream(cmd, watch=counter.watch)
    measured = time.perf_counter() - started
    if error:
        raise LaunchError(error)
    reason = ncu.failure("\n".join(counter.errors) + "\n" + tail, tool.version)
    if reason and (reason == ncu.PERMISSION or not report.exists()):
        raise LaunchError(reason)
    if not outputs.tmp["manifest"].exists():
        raise LaunchError(f"the session under ncu did not finish (ncu exit {code}); last output: {last_lines(tail, 6)}")
    if not report.exists():
        raise LaunchError(f"ncu profiled nothing: it wrote no report (exit {code}); the NVTX filter "
                          f"({' '.join(ncu.NVTX_FILTER)}) matched no range; last output: {last_lines(tail, 4)}")
    with progress.phase("export (ncu --import --csv --page raw)"):
        header, rows = ncu.read_raw_csv(export_csv(tool.path, report, csv_path))
    manifest = json.loads(outputs.tmp["manifest"].read_text())
    got = ncu.stage_counts(header, rows)
    if not rows:
        raise LaunchError(f"ncu profiled nothing: {csv_path.name} has no rows; the NVTX filter matched no range "
                          f"(ncu exit {code}; last output: {last_lines(tail, 3)})")
    if run.replay == "app-range":
        want = ncu.expected_ranges(manifest)
        short = ncu.missing_ranges(got, want)
        if short:
            raise LaunchError(f"ncu profiled fewer stage ranges than the page has ({short}); the CSV is kept "
                              "among the partial files")
    else:
        want = None
        sampled = any(page["decode_steps"] for page in manifest["capture"]["ncu"]["profiled"])
        absent = [s for s in ncu.STAGES if not got.get(s) and (s != ncu.DECODE_STEP or sampled)]
        if absent and got.get(None) != len(rows):   # rows that name no stage cannot be checked this way
            raise LaunchError(f"ncu profiled no kernel of {', '.join(absent)}; the CSV is kept among the partial files")
    if not args.keep_ncu_rep:
        report.unlink()
    progress.line(f"ncu {run.key} run: {len(rows):,} rows in {measured:.0f} s (estimate was {est.seconds:.0f} s)")
    return {"key": run.key, "replay": run.replay, "purpose": run.purpose, "metrics": list(run.metrics),
            "csv": outputs.final[f"{run.key}_csv"].name,
            "report": outputs.final[f"{run.key}_rep"].name if args.keep_ncu_rep else None,
            "command": shlex.join(cmd), "rows": len(rows),
            "rows_by_stage": {str(k): v for k, v in got.items()},
            "expected_by_stage": dict(want) if want else None,
            "profiled": manifest["capture"].get("ncu", {}).get("profiled"),
            "estimate_s": round(est.seconds, 1), "estimate_basis": est.basis, "measured_s": round(measured, 1),
            "ncu_exit": code, "_manifest": manifest}


def scaling(runs: list[dict], steps: list[int], total: int) -> dict:
    out = {}
    for r in runs:
        if r["replay"] == "app-range":
            out[r["key"]] = ("none: every stage range of the measured page is a row, with its metrics summed over the "
                             "kernels inside; gpu__time_duration is the range's span under profiling, not kernel time")
        elif len(steps) == total:
            out[r["key"]] = "none: every kernel of vision, prefill and every decode step is a row"
        else:
            out[r["key"]] = (f"vision and prefill: every kernel; decode: only steps {steps} of {total}. A step's work "
                             "is the same but for attention, which grows linearly with its KV length "
                             "(decode_kv_lengths in the manifest), so a step not sampled is the linear interpolation "
                             "in KV length between the sampled steps (or take per-step totals from the ranges run, "
                             "which has every step)")
    return out


def run(args, argv: list[str], write_spec) -> int:
    """`write_spec(args, outputs, pages, tool_version, argv, **extra)`: launch.cli's session spec."""
    progress = Progress()
    out_dir = Path(args.out_dir)
    outputs = Outputs(out_dir, args.name, SUFFIXES)
    refuse_existing([outputs], args.force)
    pages = resolve_pages(args.image)
    tool = ncu.find_ncu(args.ncu_path)
    progress.line(f"ncu {tool.version} at {tool.path} (found by {tool.found_by})")
    if args.device == "cuda":
        check_gpu()
    if args.repeats > 1:
        progress.line("note: --repeats is for the nsys capture; ncu profiles each page once")
    runs = planned_runs(args)
    batches = view_batches(pages, args)
    per_instance, basis = kernel_counts(args, batches)
    steps = args.ncu_steps
    estimates = {r.key: ncu.estimate(r, batches, len(steps), args.max_new_tokens, per_instance, basis) for r in runs}
    progress.line(f"{len(pages)} page(s), mode {args.mode}, preset {args.preset}, max_new_tokens "
                  f"{args.max_new_tokens}; runs: {', '.join(r.key for r in runs)}; estimated cost ~"
                  f"{sum(e.seconds for e in estimates.values()):.0f} s")

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs.clear_temporaries()
    done, phase = [], "ncu"
    try:
        for r in runs:
            phase = f"ncu {r.key} run"
            write_spec(args, outputs, pages, None, argv, repeats=1, ncu_version=tool.version, ncu_mode=r.replay,
                       ncu_decode_steps=steps)
            done.append(profile_once(tool, r, outputs, progress, estimates[r.key], args))
        manifest = done[-1].pop("_manifest")
        for d in done:
            d.pop("_manifest", None)
        sidecar = {"schema": SCHEMA, "name": args.name, "ncu": {"version": tool.version, "path": str(tool.path)},
                   "gpu": manifest["environment"].get("gpu_name"), "nvtx_filter": list(ncu.NVTX_FILTER),
                   "clock_control": "none", "cache_control": CACHE_CONTROL,
                   "decode_steps": {"total": args.max_new_tokens, "sampled_by_kernel_runs": steps},
                   "scaling": scaling(done, steps, args.max_new_tokens), "runs": done,
                   "measured_s": round(sum(d["measured_s"] for d in done), 1),
                   "estimate_s": round(sum(d["estimate_s"] for d in done), 1), "manifest": manifest}
        outputs.tmp["json"].write_text(json.dumps(sidecar, indent=1) + "\n")
    except (LaunchError, KeyboardInterrupt, Exception) as e:
        raise stopped(e, phase, [outputs]) from None

    outputs.tmp["manifest"].unlink(missing_ok=True)
    kinds = ["json"] + [f"{d['key']}_csv" for d in done]
    if args.keep_ncu_rep:
        kinds += [f"{d['key']}_rep" for d in done]
    written = outputs.publish(kinds, args.force)
    progress.line("wrote " + ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in written))
    progress.line(f"ncu cost: measured {sidecar['measured_s']:.0f} s, estimated {sidecar['estimate_s']:.0f} s")
    for line in progress.timeline.summary(progress.elapsed()):
        progress.line(line)
    return 0
