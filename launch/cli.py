"""`dsocr-trace IMAGE`: one DeepSeek-OCR session under Nsight Systems, exported, then under the PyTorch
profiler, with the workload manifest; finally the stage table of `dsocr-analyze`.

Outputs in --out-dir (default traces/), all written under hidden temporary names and renamed at the end:
    NAME.nsys-rep          the Nsight Systems report
    NAME.sqlite            its SQLite export (what dsocr-analyze reads)
    NAME.parquetdir/       nsys's Parquet export of the same report (nsys >= 2023.4; read fastest; --no-parquet)
    NAME.json              the workload manifest (also inside the trace as an NVTX mark)
    NAME.pt.trace.json.gz  the PyTorch profiler's Chrome trace (separate process: CUPTI takes one subscriber)
    NAME.ops.md            operator table per stage from the PyTorch profiler
    NAME.ops-nvtx.*        --torch-ops-nvtx: a second nsys capture with PyTorch operator ranges (launch/ops_nvtx.py)
On failure the files made so far become NAME.partial.* and the error says which phase failed.
With --ncu the session runs under Nsight Compute instead (launch/ncu_pass.py: NAME.ncu.csv, NAME.ncu.json, ...).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dsocr_perf.dsocr.extras import DefaultsHelpFormatter, capture_extra_hint, missing_capture_modules, package_version
from dsocr_perf.launch import command, gpu_metrics, ncu_pass, ops_nvtx
from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.images import resolve_pages
from dsocr_perf.launch.manifest import host_summary
from dsocr_perf.launch.nsys import find_nsys, import_qdstrm, last_lines, profile_help
from dsocr_perf.launch.runner import Outputs, Progress, check_gpu, refuse_existing, remove, stopped, stream

DEFAULT_IMAGE = str(Path(__file__).resolve().parent / "assets" / "sample_page.png")
# Output kinds: suffix after NAME.
SUFFIXES = {"report": ".nsys-rep", "sqlite": ".sqlite", "parquet": ".parquetdir", "manifest": ".json",
            "torch_trace": ".pt.trace.json.gz", "ops": ".ops.md"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    from dsocr_perf.dsocr.config import ENGINES
    from dsocr_perf.dsocr.workload import MODES

    ap = argparse.ArgumentParser(
        prog="dsocr-trace", formatter_class=DefaultsHelpFormatter,
        description="Capture one DeepSeek-OCR session under Nsight Systems and the PyTorch profiler.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE,
                    help="an image, a folder of images, or a .txt list of image paths "
                         "(default: the bundled sample page)")
    ap.add_argument("--mode", default="gundam", choices=list(MODES), help="image mode (gundam: 640-px tiles + a 1024-px view)")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--weights", metavar="DIR", help="official checkpoint folder")
    source.add_argument("--random-weights", action="store_true",
                        help="seeded random weights (the default without --weights; implies --ignore-eos)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--preset", default="official", choices=["official", "tiny"],
                    help="model size: official (DeepSeek-OCR) or tiny (tests)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="decode steps per page at most")
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measured repeats of each page inside the one capture (default 1; 3 for spread)")
    ap.add_argument("--max-tiles", type=int, default=9, help="Gundam tile limit (9 as HF, 6 as vLLM)")
    ap.add_argument("--engine", default="faithful", choices=list(ENGINES),
                    help="decode engine: faithful (vendor-like, the default) or fast (static KV cache, CUDA graph)")
    ap.add_argument("--name", default="run", help="output base name (default run)")
    ap.add_argument("--out-dir", default="traces", help="folder of the outputs")
    ap.add_argument("--no-torch-profiler", action="store_true", help="skip the PyTorch profiler pass")
    add_profiler_pass_arguments(ap)
    ap.add_argument("--no-analyze", action="store_true", help="skip the final dsocr-analyze stage table")
    ap.add_argument("--no-parquet", action="store_true",
                    help="skip nsys's Parquet export (NAME.parquetdir, beside NAME.sqlite; read fastest by dsocr-analyze)")
    ap.add_argument("--nsys", metavar="PATH", help="the nsys program to use")
    ap.add_argument("--force", action="store_true", help="overwrite existing outputs of NAME")
    # Tests only: run the session on the CPU (with a stand-in nsys); real captures need a GPU.
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    gpu_metrics.add_arguments(ap)
    ops_nvtx.add_arguments(ap)
    ncu_pass.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error("--max-new-tokens must be at least 1")
    check_profiler_pass_arguments(ap, args)
    ncu_pass.check_arguments(ap, args)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", args.name):
        ap.error(f"--name {args.name!r}: use letters, digits, '.', '_', '+', '-' (no folders, no leading dot)")
    if args.weights is None:
        args.random_weights = True
    if args.random_weights:
        args.ignore_eos = True   # random weights never produce a meaningful EOS: bound by --max-new-tokens
    return args


# The PyTorch profiler pass records operators per stage, not timing: the first few decode steps show every
# operator a step runs (all steps run the same ones), at a fraction of the cost of profiling all of them.
TORCH_DECODE_STEPS = 8


def add_profiler_pass_arguments(ap) -> None:
    ap.add_argument("--torch-decode-steps", "--torch-max-new-tokens", dest="torch_decode_steps", metavar="N|all",
                    default=str(TORCH_DECODE_STEPS),
                    help=f"decode steps the PyTorch profiler pass records (default {TORCH_DECODE_STEPS}: steps "
                         f"0-{TORCH_DECODE_STEPS - 1}; 'all' for every step of --max-new-tokens); vision and "
                         "prefill are always recorded in full")


def check_profiler_pass_arguments(ap, args) -> None:
    value = args.torch_decode_steps
    if value == "all":
        args.torch_decode_steps = None
    elif value.isdigit() and int(value) >= 1:
        args.torch_decode_steps = int(value)
    else:
        ap.error(f"--torch-decode-steps {value!r}: give a number of steps (at least 1) or 'all'")


def write_spec(args, outputs: Outputs, pages, nsys_version: str, argv: list[str], **extra) -> None:
    """The child session's instructions; `extra` adds or overrides keys (GPU metrics, ncu mode, ...)."""
    spec = {
        "name": args.name, "pages": [p.to_dict() for p in pages], "mode": args.mode, "max_tiles": args.max_tiles,
        "max_new_tokens": args.max_new_tokens, "ignore_eos": args.ignore_eos, "repeats": args.repeats,
        "torch_decode_steps": args.torch_decode_steps,
        "preset": args.preset, "weights": args.weights, "seed": args.seed, "device": args.device,
        "engine": args.engine,
        "nsys_version": nsys_version, "command": "dsocr-trace " + shlex.join(argv),
        "manifest_out": str(outputs.tmp["manifest"]), "trace_out": str(outputs.tmp.get("torch_trace", "")),
        "ops_out": str(outputs.tmp.get("ops", "")),
    } | extra
    outputs.spec.write_text(json.dumps(spec, indent=1))


def nsys_pass(nsys, outputs: Outputs, progress: Progress, options: list[str] = (),
              title: str = "capture (nsys profile: model load, warm-up, measured pages)") -> None:
    cmd = command.nsys_profile_command(nsys.path, outputs.tmp["report"], command.child_command("nsys", outputs.spec),
                                       options)
    progress.line("nsys command: " + shlex.join(cmd))
    with progress.phase(title):
        code, tail, error = stream(cmd, watch=progress.timeline.watch)
    if error:
        raise LaunchError(error)
    if not outputs.tmp["manifest"].exists():
        raise LaunchError(f"the session under nsys did not finish (nsys exit {code}); last output: "
                          f"{last_lines(tail, 6)}")
    outputs.adopt_nsys_names()
    if not outputs.tmp["report"].exists():
        if outputs.qdstrm.exists():
            with progress.phase("import (.qdstrm -> .nsys-rep with QdstrmImporter)"):
                import_qdstrm(nsys.path, outputs.qdstrm)
            outputs.qdstrm.unlink(missing_ok=True)
        else:
            raise LaunchError(f"nsys profile wrote no report (exit {code}): the capture range never opened or "
                              "nsys could not write it (the session must reach cudaProfilerStart on a CUDA "
                              f"device); last output: {last_lines(tail, 6)}")
    elif code != 0:
        progress.line(f"note: nsys exited with {code} but wrote the report; continuing")


def export_pass(nsys, outputs: Outputs, progress: Progress, title: str = "export (nsys export --type=sqlite)") -> None:
    cmd = command.nsys_export_command(nsys.path, outputs.tmp["report"], outputs.tmp["sqlite"])
    with progress.phase(title):
        code, tail, _ = stream(cmd)
    if code != 0 or not outputs.tmp["sqlite"].exists():
        raise LaunchError(f"nsys export failed (exit {code}); last output: {last_lines(tail, 6)}")


def parquet_pass(nsys, outputs: Outputs, progress: Progress) -> bool:
    """nsys's Parquet export beside the SQLite one (what dsocr-analyze reads fastest); a failure is a note, not an
    error: the SQLite export is the capture's result."""
    if version_tuple(nsys.version) < command.PARQUET_EXPORT_SINCE:
        progress.line(f"Parquet export skipped: nsys {nsys.version} has none (nsys 2023.4 and later)")
        return False
    cmd = command.nsys_export_command(nsys.path, outputs.tmp["report"], outputs.tmp["parquet"], "parquetdir")
    with progress.phase("export (nsys export --type=parquetdir)"):
        code, tail, _ = stream(cmd)
    if code != 0 or not outputs.tmp["parquet"].is_dir():
        remove(outputs.tmp["parquet"])
        progress.line(f"Parquet export skipped: nsys export --type=parquetdir failed (exit {code}): "
                      f"{last_lines(tail, 2)}")
        return False
    return True


def version_tuple(version: str) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def torch_profiler_pass(outputs: Outputs, progress: Progress) -> None:
    with progress.phase("profiler pass (PyTorch profiler, separate process)"):
        code, tail, error = stream(command.child_command("torch", outputs.spec), watch=progress.timeline.watch)
    if error:
        raise LaunchError(error)
    if code != 0 or not (outputs.tmp["torch_trace"].exists() and outputs.tmp["ops"].exists()):
        raise LaunchError(f"the PyTorch profiler pass failed (exit {code}); last output: {last_lines(tail, 6)}")


def analysis(sqlite: Path, progress: Progress) -> int:
    if importlib.util.find_spec("duckdb") is None or importlib.util.find_spec("dsocr_perf.analyze.cli") is None:
        progress.line("analysis skipped: the analysis side (duckdb, analyze.cli) is not installed here; "
                      f"copy {sqlite} to a machine with `pip install dsocr-perf` and run dsocr-analyze on it")
        return 0
    with progress.phase("analysis (dsocr-analyze)"):
        code, tail, _ = stream([sys.executable, "-m", "dsocr_perf.analyze.cli", str(sqlite)], prefix="")
    if code != 0:
        progress.line(f"analysis failed (exit {code}); the capture itself is complete")
    return code


def ops_nvtx_pass(args, nsys, outputs: Outputs, pages, argv, metrics, how: str, progress: Progress) -> None:
    """--torch-ops-nvtx: the same session captured again, with one NVTX range per PyTorch operator."""
    write_spec(args, outputs, pages, nsys.version, argv, gpu_metrics=metrics.record(), torch_ops_nvtx=how)
    nsys_pass(nsys, outputs, progress, metrics.nsys_options() + ops_nvtx.nsys_options(how),
              title=f"operator-range capture (nsys profile, operator ranges by {how})")
    export_pass(nsys, outputs, progress, title="operator-range export (nsys export --type=sqlite)")
    n = ops_nvtx.operator_ranges(outputs.tmp["sqlite"])
    progress.line(f"operator ranges in the operator-range capture: {n:,}" + (
        "" if n else " -- none: the operators were not annotated (try --torch-ops-nvtx emit or nsys)"))


def run(args, argv: list[str]) -> int:
    if args.ncu:
        return ncu_pass.run(args, argv, write_spec)
    progress = Progress()
    out_dir = Path(args.out_dir)
    outputs = Outputs(out_dir, args.name, SUFFIXES)
    ops_outputs = Outputs(out_dir, f"{args.name}.{ops_nvtx.STEM}", ops_nvtx.SUFFIXES)
    refuse_existing([outputs, ops_outputs], args.force)
    pages = resolve_pages(args.image)
    nsys = find_nsys(args.nsys)
    progress.line(f"nsys {nsys.version} at {nsys.path} (found by {nsys.found_by})")
    with ThreadPoolExecutor(1) as pool:   # the GPU check imports torch in a child: let nsys answer meanwhile
        gpu = pool.submit(check_gpu) if args.device == "cuda" else None
        nsys_help = profile_help(nsys.path)
        metrics = gpu_metrics.probe(nsys.path, nsys_help, args)
        if gpu:
            gpu.result()
    progress.line("GPU metrics: " + (f"on, {metrics.frequency_hz} Hz" if metrics.enabled
                                     else f"off ({metrics.reason})"))
    ops_how = ops_nvtx.method(nsys_help, args.torch_ops_nvtx) if args.torch_ops_nvtx else None
    progress.line(f"{len(pages)} page(s) x {args.repeats} repeat(s), mode {args.mode}, preset {args.preset}, "
                  f"{'weights ' + args.weights if args.weights else 'random weights (seed %d)' % args.seed}, "
                  f"max_new_tokens {args.max_new_tokens}{', ignore EOS' if args.ignore_eos else ''}, "
                  f"{args.engine} engine")

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs.clear_temporaries()   # leftovers of a killed run of the same name
    ops_outputs.clear_temporaries()

    def capture(m: gpu_metrics.GpuMetrics) -> None:
        write_spec(args, outputs, pages, nsys.version, argv, gpu_metrics=m.record())
        nsys_pass(nsys, outputs, progress, m.nsys_options())

    phase = "capture"
    try:
        metrics = gpu_metrics.capture_with_fallback(capture, metrics, progress, outputs.tmp["manifest"].exists)
        phase = "export"
        export_pass(nsys, outputs, progress)
        kinds = ["report", "sqlite", "manifest"]
        if not args.no_parquet and parquet_pass(nsys, outputs, progress):
            kinds.append("parquet")
        if ops_how:
            phase = "operator-range capture"
            ops_nvtx_pass(args, nsys, ops_outputs, pages, argv, metrics, ops_how, progress)
        if not args.no_torch_profiler:
            phase = "profiler pass"
            torch_profiler_pass(outputs, progress)
            kinds += ["torch_trace", "ops"]
    except (LaunchError, KeyboardInterrupt, Exception) as e:
        raise stopped(e, phase, [outputs, ops_outputs]) from None

    written = outputs.publish(kinds, args.force)
    written += ops_outputs.publish(list(ops_nvtx.SUFFIXES) if ops_how else [], args.force)
    progress.line("wrote " + ", ".join(f"{p} ({size(p) / 1e6:.1f} MB)" for p in written))
    for line in host_summary(json.loads(outputs.final["manifest"].read_text())):
        progress.line(line)
    code = 0 if args.no_analyze else analysis(outputs.final["sqlite"], progress)
    for line in progress.timeline.summary(progress.elapsed()):
        progress.line(line)
    return code


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size


def _interrupt(signum, frame):
    raise KeyboardInterrupt   # SIGTERM (e.g. from `timeout`) ends the run like Ctrl-C: partial files kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    missing = missing_capture_modules()
    if missing:
        print(f"Error: {capture_extra_hint('dsocr-trace', missing)}", file=sys.stderr, flush=True)
        return 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return run(args, argv)
    except LaunchError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("Error: interrupted before the capture started; nothing was written", file=sys.stderr, flush=True)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
