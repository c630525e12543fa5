"""`dsocr-trace IMAGE`: one DeepSeek-OCR session under Nsight Systems, exported, then under the PyTorch
profiler, with the workload manifest; finally the stage table of `dsocr-analyze`.

Outputs in --out-dir (default traces/), all written under hidden temporary names and renamed at the end:
    NAME.nsys-rep          the Nsight Systems report
    NAME.sqlite            its SQLite export (what dsocr-analyze reads)
    NAME.json              the workload manifest (also inside the trace as an NVTX mark)
    NAME.pt.trace.json.gz  the PyTorch profiler's Chrome trace (separate process: CUPTI takes one subscriber)
    NAME.ops.md            operator table per stage from the PyTorch profiler
On failure the files made so far become NAME.partial.* and the error says which phase failed.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dsocr_perf.launch import command
from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.images import resolve_pages
from dsocr_perf.launch.manifest import host_summary
from dsocr_perf.launch.nsys import find_nsys, import_qdstrm, last_lines

DEFAULT_IMAGE = str(Path(__file__).resolve().parent / "assets" / "sample_page.png")
# Output kinds: suffix after NAME.
SUFFIXES = {"report": ".nsys-rep", "sqlite": ".sqlite", "manifest": ".json", "torch_trace": ".pt.trace.json.gz",
            "ops": ".ops.md"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    from dsocr_perf.dsocr.config import ENGINES
    from dsocr_perf.dsocr.workload import MODES

    ap = argparse.ArgumentParser(
        prog="dsocr-trace",
        description="Capture one DeepSeek-OCR session under Nsight Systems and the PyTorch profiler.")
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE,
                    help="an image, a folder of images, or a .txt list of image paths "
                         "(default: the bundled sample page)")
    ap.add_argument("--mode", default="gundam", choices=list(MODES))
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--weights", metavar="DIR", help="official checkpoint folder")
    source.add_argument("--random-weights", action="store_true",
                        help="seeded random weights (the default without --weights; implies --ignore-eos)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="official", choices=["official", "tiny"])
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measured repeats of each page inside the one capture (default 1; 3 for spread)")
    ap.add_argument("--max-tiles", type=int, default=9, help="Gundam tile limit (9 as HF, 6 as vLLM)")
    ap.add_argument("--engine", default="faithful", choices=list(ENGINES),
                    help="decode engine: faithful (vendor-like, the default) or fast (static KV cache, CUDA graph)")
    ap.add_argument("--name", default="run", help="output base name (default run)")
    ap.add_argument("--out-dir", default="traces")
    ap.add_argument("--no-torch-profiler", action="store_true", help="skip the PyTorch profiler pass")
    ap.add_argument("--torch-max-new-tokens", type=int, metavar="N",
                    help="decode tokens in the PyTorch profiler pass (default: --max-new-tokens); fewer keep "
                         "its trace small")
    ap.add_argument("--no-analyze", action="store_true", help="skip the final dsocr-analyze stage table")
    ap.add_argument("--nsys", metavar="PATH", help="the nsys program to use")
    ap.add_argument("--force", action="store_true", help="overwrite existing outputs of NAME")
    # Tests only: run the session on the CPU (with a stand-in nsys); real captures need a GPU.
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error("--max-new-tokens must be at least 1")
    if args.torch_max_new_tokens is not None and args.torch_max_new_tokens < 1:
        ap.error("--torch-max-new-tokens must be at least 1")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", args.name):
        ap.error(f"--name {args.name!r}: use letters, digits, '.', '_', '+', '-' (no folders, no leading dot)")
    if args.weights is None:
        args.random_weights = True
    if args.random_weights:
        args.ignore_eos = True   # random weights never produce a meaningful EOS: bound by --max-new-tokens
    return args


class Progress:
    """One line per phase: elapsed since start, the phase, and how long it took."""

    def __init__(self):
        self.start = time.perf_counter()

    def line(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f} s] {text}", flush=True)

    def phase(self, name: str):
        progress = self

        class _Phase:
            def __enter__(self):
                self.t = time.perf_counter()
                progress.line(f"{name} ...")
                return self

            def __exit__(self, exc_type, exc, tb):
                if exc_type is None:
                    progress.line(f"{name}: done in {time.perf_counter() - self.t:.1f} s")
                return False

        return _Phase()


class Outputs:
    """Final, temporary and partial paths of one capture."""

    def __init__(self, out_dir: Path, name: str):
        self.dir, self.name = out_dir, name
        self.final = {k: out_dir / f"{name}{s}" for k, s in SUFFIXES.items()}
        self.tmp = {k: out_dir / f".{name}.tmp{s}" for k, s in SUFFIXES.items()}
        self.spec = out_dir / f".{name}.tmp.spec.json"
        self.qdstrm = out_dir / f".{name}.tmp.qdstrm"

    def adopt_nsys_names(self) -> None:
        """Should an nsys version name its files differently (.tmp treated as an extension), take them."""
        for target in (self.tmp["report"], self.qdstrm):
            if not target.exists():
                hits = sorted(self.dir.glob(glob_escape(f".{self.name}.tmp") + "*" + target.suffix))
                if len(hits) == 1:
                    os.replace(hits[0], target)

    def existing(self) -> list[Path]:
        return [p for p in self.final.values() if p.exists()]

    def temporaries(self) -> list[Path]:
        return [p for p in [*self.tmp.values(), self.qdstrm] if p.exists()]

    def clear_temporaries(self) -> None:
        for p in [*self.temporaries(), self.spec]:
            p.unlink(missing_ok=True)

    def keep_partials(self) -> list[Path]:
        """Rename what exists to NAME.partial[-N].*, never over an older partial."""
        found = self.temporaries()
        if not found:
            return []
        for n in range(1, 1000):
            stem = f"{self.name}.partial" + ("" if n == 1 else f"-{n}")
            if not any(self.dir.glob(glob_escape(stem) + ".*")):
                break
        kept = []
        for p in found:
            target = self.dir / (stem + p.name.removeprefix(f".{self.name}.tmp"))
            os.replace(p, target)
            kept.append(target)
        return kept

    def publish(self, kinds: list[str], force: bool) -> list[Path]:
        if force:   # a forced run replaces the whole set, so no stale file of an older run stays beside it
            for k, p in self.final.items():
                if k not in kinds:
                    p.unlink(missing_ok=True)
        for k in kinds:
            os.replace(self.tmp[k], self.final[k])
        self.spec.unlink(missing_ok=True)
        return [self.final[k] for k in kinds]


NSYS_PROGRESS = re.compile(r"^\s*Processing \d+ events: \[")


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stream(cmd: list[str], prefix: str = "    ") -> tuple[int, str, str | None]:
    """Run cmd, echo its output indented; return (exit code, last lines, the child's `Error:` line)."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    error_line = None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=child_env(), errors="replace")
    except OSError as e:
        raise LaunchError(f"cannot run {cmd[0]}: {e}") from None
    try:
        for line in proc.stdout:   # text mode turns nsys's \r progress bars into lines: show only 100%
            line = line.rstrip("\n")
            if NSYS_PROGRESS.match(line) and "100%" not in line:
                continue
            print(prefix + line, flush=True)
            tail.append(line)
            if line.startswith("Error: "):
                error_line = line.removeprefix("Error: ")
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return code, "\n".join(tail), error_line


def check_gpu() -> None:
    """A quick child process: is a CUDA device visible to this torch?"""
    probe = ("import torch, json; print(json.dumps({'ok': torch.cuda.is_available(), "
             "'torch': torch.__version__, 'cuda': torch.version.cuda}))")
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                             env=child_env())
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError, OSError):
        raise LaunchError("cannot check for a GPU: `import torch` failed in a child process; install the "
                          "capture extra (pip install -e '.[capture]')") from None
    if not info["ok"]:
        build = f"CUDA {info['cuda']} build" if info["cuda"] else "a CPU-only build"
        raise LaunchError(f"no CUDA GPU visible to PyTorch (torch {info['torch']}, {build}); capture needs an "
                          "NVIDIA GPU, its driver and a CUDA build of torch. To study an existing trace, run "
                          "dsocr-analyze on it instead")


def write_spec(args, outputs: Outputs, pages, nsys_version: str, argv: list[str]) -> None:
    spec = {
        "name": args.name, "pages": [p.to_dict() for p in pages], "mode": args.mode, "max_tiles": args.max_tiles,
        "max_new_tokens": args.max_new_tokens, "ignore_eos": args.ignore_eos, "repeats": args.repeats,
        "torch_max_new_tokens": args.torch_max_new_tokens or args.max_new_tokens,
        "preset": args.preset, "weights": args.weights, "seed": args.seed, "device": args.device,
        "engine": args.engine,
        "nsys_version": nsys_version, "command": "dsocr-trace " + shlex.join(argv),
        "manifest_out": str(outputs.tmp["manifest"]), "trace_out": str(outputs.tmp["torch_trace"]),
        "ops_out": str(outputs.tmp["ops"]),
    }
    outputs.spec.write_text(json.dumps(spec, indent=1))


def nsys_pass(nsys, outputs: Outputs, progress: Progress) -> None:
    cmd = command.nsys_profile_command(nsys.path, outputs.tmp["report"], command.child_command("nsys", outputs.spec))
    progress.line("nsys command: " + shlex.join(cmd))
    with progress.phase("capture (nsys profile: model load, warm-up, measured pages)"):
        code, tail, error = stream(cmd)
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


def export_pass(nsys, outputs: Outputs, progress: Progress) -> None:
    cmd = command.nsys_export_command(nsys.path, outputs.tmp["report"], outputs.tmp["sqlite"])
    with progress.phase("export (nsys export --type=sqlite)"):
        code, tail, _ = stream(cmd)
    if code != 0 or not outputs.tmp["sqlite"].exists():
        raise LaunchError(f"nsys export failed (exit {code}); last output: {last_lines(tail, 6)}")


def torch_profiler_pass(outputs: Outputs, progress: Progress) -> None:
    with progress.phase("profiler pass (PyTorch profiler, separate process)"):
        code, tail, error = stream(command.child_command("torch", outputs.spec))
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


def run(args, argv: list[str]) -> int:
    progress = Progress()
    out_dir = Path(args.out_dir)
    outputs = Outputs(out_dir, args.name)
    existing = outputs.existing()
    if existing and not args.force:
        raise LaunchError(f"{', '.join(map(str, existing))} already exist(s); choose another --name or pass "
                          "--force to replace them")
    pages = resolve_pages(args.image)
    nsys = find_nsys(args.nsys)
    progress.line(f"nsys {nsys.version} at {nsys.path} (found by {nsys.found_by})")
    if args.device == "cuda":
        check_gpu()
    progress.line(f"{len(pages)} page(s) x {args.repeats} repeat(s), mode {args.mode}, preset {args.preset}, "
                  f"{'weights ' + args.weights if args.weights else 'random weights (seed %d)' % args.seed}, "
                  f"max_new_tokens {args.max_new_tokens}{', ignore EOS' if args.ignore_eos else ''}, "
                  f"{args.engine} engine")

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs.clear_temporaries()   # leftovers of a killed run of the same name
    write_spec(args, outputs, pages, nsys.version, argv)
    phase = "capture"
    try:
        nsys_pass(nsys, outputs, progress)
        phase = "export"
        export_pass(nsys, outputs, progress)
        kinds = ["report", "sqlite", "manifest"]
        if not args.no_torch_profiler:
            phase = "profiler pass"
            torch_profiler_pass(outputs, progress)
            kinds += ["torch_trace", "ops"]
    except (LaunchError, KeyboardInterrupt, Exception) as e:
        kept = outputs.keep_partials()
        outputs.spec.unlink(missing_ok=True)
        where = ("; kept partial files: " + ", ".join(map(str, kept))) if kept else "; no partial files were written"
        if isinstance(e, KeyboardInterrupt):
            raise LaunchError(f"interrupted during the {phase}{where}") from None
        if not isinstance(e, LaunchError):
            raise LaunchError(f"{phase} failed: {type(e).__name__}: {e}{where}") from None
        raise LaunchError(f"{phase} failed: {e}{where}") from None

    written = outputs.publish(kinds, args.force)
    progress.line("wrote " + ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in written))
    for line in host_summary(json.loads(outputs.final["manifest"].read_text())):
        progress.line(line)
    if args.no_analyze:
        return 0
    return analysis(outputs.final["sqlite"], progress)


def _interrupt(signum, frame):
    raise KeyboardInterrupt   # SIGTERM (e.g. from `timeout`) ends the run like Ctrl-C: partial files kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
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
