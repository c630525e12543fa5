"""What every capture pass of `dsocr-trace` shares: progress lines, output names, running a child command.

    Progress   one line per phase with the elapsed time; keeps the Timeline for the closing summary
    Outputs    final, hidden temporary and NAME.partial.* paths of one set of outputs
    refuse_existing, stopped   the rules every run keeps: no overwrite without --force; a failure keeps what
               was written as NAME.partial.* and says so in one line
    stream     run a command, echo its output indented, return its exit code, last lines and `Error:` line
    check_gpu  is a CUDA device visible to torch (asked in a child process: torch is slow to import)
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.timeline import Timeline


class Progress:
    """One line per phase: elapsed since start, the phase, and how long it took."""

    def __init__(self):
        self.start = time.perf_counter()
        self.timeline = Timeline()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self, text: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {text}", flush=True)

    def phase(self, name: str):
        progress = self

        class _Phase:
            def __enter__(self):
                self.t = time.perf_counter()
                progress.line(f"{name} ...")
                return self

            def __exit__(self, exc_type, exc, tb):
                if exc_type is None:
                    seconds = time.perf_counter() - self.t
                    progress.timeline.phase_done(name, seconds)
                    progress.line(f"{name}: done in {seconds:.1f} s")
                return False

        return _Phase()


class Outputs:
    """Final, temporary and partial paths of one set of outputs; `suffixes`: kind -> suffix after NAME."""

    def __init__(self, out_dir: Path, name: str, suffixes: dict[str, str]):
        self.dir, self.name = out_dir, name
        self.final = {k: out_dir / f"{name}{s}" for k, s in suffixes.items()}
        self.tmp = {k: out_dir / f".{name}.tmp{s}" for k, s in suffixes.items()}
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
            remove(p)

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
                if k not in kinds or p.is_dir():   # a folder (the Parquet export) cannot be renamed over
                    remove(p)
        for k in kinds:
            os.replace(self.tmp[k], self.final[k])
        self.spec.unlink(missing_ok=True)
        return [self.final[k] for k in kinds]


def remove(path: Path) -> None:
    """A file or a folder of ours (the Parquet export), if it is there; never through a symlink."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def refuse_existing(sets: list[Outputs], force: bool) -> None:
    existing = [p for outputs in sets for p in outputs.existing()]
    if existing and not force:
        raise LaunchError(f"{', '.join(map(str, existing))} already exist(s); choose another --name or pass "
                          "--force to replace them")


def stopped(e: BaseException, phase: str, sets: list[Outputs]) -> LaunchError:
    """The one-line error of a run stopped in `phase` by `e`; what the run wrote becomes NAME.partial.*."""
    kept = [p for outputs in sets for p in outputs.keep_partials()]
    for outputs in sets:
        outputs.spec.unlink(missing_ok=True)
    where = ("; kept partial files: " + ", ".join(map(str, kept))) if kept else "; no partial files were written"
    if isinstance(e, KeyboardInterrupt):
        return LaunchError(f"interrupted during the {phase}{where}")
    if not isinstance(e, LaunchError):
        return LaunchError(f"{phase} failed: {type(e).__name__}: {e}{where}")
    return LaunchError(f"{phase} failed: {e}{where}")


NSYS_PROGRESS = re.compile(r"^\s*Processing \d+ events: \[")


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stream(cmd: list[str], prefix: str = "    ", watch=None) -> tuple[int, str, str | None]:
    """Run cmd, echo its output indented; return (exit code, last lines, the child's `Error:` line).

    `watch(line)` sees every line first; when it returns False the line is not echoed (kept in the tail)."""
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
            if (watch(line) if watch else None) is not False:
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
