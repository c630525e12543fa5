"""Names of the files a trace's outputs get, and the rules that keep inputs safe.

One rule names every derived file: the trace's stem (its name without the trace suffix) plus the
output's own suffix: `traces/run.sqlite.gz` -> `traces/run.json` (manifest), `run.report/`,
`run.perfetto.json`, `run.analysis.sqlite`, `run.ncu.csv`.

Outputs are written to a temporary file created exclusively beside the final name and renamed over
it at the end; the temporary file goes on every exit path. An output may not be the input, a file
the input uses, or reached through a symlink; an existing one is replaced only with --force.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from dsocr_perf.analyze.errors import OutputError, TraceError

TRACE_SUFFIXES = (".pt.trace.json.gz", ".pt.trace.json", ".sqlite.gz", ".sqlite", ".nsys-rep", ".json.gz", ".json",
                  ".parquetdir", ".arrowdir")
TABLE_FILE_SUFFIXES = (".parquet", ".arrow")    # one file per nsys table: `nsys export --type parquetdir|arrowdir`


def is_table_folder(path: Path) -> bool:
    """A folder holding nsys tables as Parquet/Arrow files (StringIds is in every export)."""
    path = Path(path)
    return path.is_dir() and any((path / f"StringIds{s}").is_file() for s in TABLE_FILE_SUFFIXES)


def stem(path: Path) -> str:
    name = Path(path).name
    for suffix in TRACE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def derived(path: Path, suffix: str) -> Path:
    """The file beside the trace that belongs to it: stem + suffix."""
    path = Path(path)
    return path.with_name(stem(path) + suffix)


def check_input(path: Path, what: str = "trace") -> Path:
    """A regular file (or a symlink to one), or a folder of Parquet/Arrow tables; never a FIFO,
    device or socket (reading one would hang or consume it)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file; give an nsys export (`nsys export --type sqlite`) or a PyTorch "
                         "profiler trace (.json / .json.gz)") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot open it ({e.strerror or e}); check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return path
    raise TraceError(f"{path} is not a regular file (a FIFO, device or socket); copy the {what} to a file and "
                     "give that")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(out: Path, force: bool, option: str, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output that would harm an input or an existing file; `option` names the flag that
    picks another file (e.g. '--out')."""
    out = Path(out)
    try:
        return _check_output(out, force, option, inputs)
    except OSError as e:  # a name too long, a path through a file, a loop of symlinks
        raise OutputError(f"{out}: cannot write there ({e.strerror or e}); pass {option} another path") from None


def _check_output(out: Path, force: bool, option: str, inputs) -> Path:
    if out.is_symlink():
        raise OutputError(f"{out} is a symlink: outputs are never written through one; pass {option} a plain path")
    if is_input(out, inputs):
        raise OutputError(f"{out} is the input trace (or a file it uses): pass {option} another file")
    if out.exists():
        if out.is_dir():
            raise OutputError(f"{out} is a folder: pass {option} a file name")
        if not out.is_file():   # a device, FIFO or socket: renaming over it would replace the node itself
            raise OutputError(f"{out} is not a regular file (a device, FIFO or socket): outputs only replace files; "
                              f"pass {option} a file path")
        if not force:
            raise OutputError(f"{out} exists: pass --force to overwrite it, or {option} another file")
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"folder {parent} does not exist: create it, or pass {option} elsewhere")
    if not parent.is_dir():
        raise OutputError(f"{parent} is not a folder: pass {option} a path inside a folder")
    return out


def protected(inputs) -> list[Path]:
    """The inputs and the files they use: each trace's manifest beside it (NAME.json)."""
    out = []
    for source in map(Path, inputs):
        out += [source, derived(source, ".json")]
    return out


def is_input(out: Path, inputs) -> bool:
    """`out` is one of the inputs, a file they use, or inside an input folder."""
    return any(_same_file(out, source) or _inside(out, source) for source in protected(inputs))


def _inside(out: Path, source: Path) -> bool:
    """`out` lies inside the input when the input is a folder (a Parquet export)."""
    try:
        return source.is_dir() and out.resolve().is_relative_to(source.resolve())
    except OSError:
        return False


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block ends (on the main thread): a temporary file is created and its
    name held in one step, so an interrupt can never leave a file nobody will remove."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


LIVE_TEMPORARIES: set[Path] = set()    # created beside an output, not yet renamed over it or removed


def discard_temporaries() -> None:
    """Remove every output temporary still alive: the last act of a failed or interrupted command. The
    `finally` of atomic_output/atomic_path removes its own, except when a signal lands inside contextlib's
    frames, between the body and the generator's resumption (seen once in the hostile corpus)."""
    for path in list(LIVE_TEMPORARIES):
        try:
            path.unlink()
        except OSError:
            pass
    LIVE_TEMPORARIES.clear()


def temporary_beside(out: Path) -> tuple[int, Path]:
    """(fd, path) of a new file created exclusively beside `out`, named `.OUT.XXXX.part`. Call it inside
    `signals_held()` inside the try whose `finally` removes the file."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name[:100]}.", suffix=".part", dir=out.parent)
    except OSError as e:
        raise OutputError(f"cannot write in {out.parent} ({e.strerror or e}); pass an output in a writable folder") \
            from None
    LIVE_TEMPORARIES.add(Path(name))
    return fd, Path(name)


@contextmanager
def atomic_output(out: Path, mode: str = "w", **kwargs):
    """Open a temporary file created exclusively beside `out`; on success rename it over `out`, on
    any failure (or Ctrl-C) remove it. Write errors become one OutputError line."""
    out = Path(out)
    tmp = None
    try:
        with signals_held():
            fd, tmp = temporary_beside(out)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        _usual_mode(tmp)
        os.replace(tmp, out)
    except (OSError, sqlite3.OperationalError) as e:   # sqlite3: 'database or disk is full'
        raise OutputError(f"cannot write {out} ({getattr(e, 'strerror', None) or e}); check free space and "
                          "permissions") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
            LIVE_TEMPORARIES.discard(tmp)


def _usual_mode(tmp: Path) -> None:
    """mkstemp makes 0600 files; an output gets what open() would have given it (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)


@contextmanager
def atomic_path(out: Path):
    """Like atomic_output, for writers that want a path (sqlite_utils, matplotlib, pyarrow)."""
    out = Path(out)
    tmp = None
    try:
        with signals_held():
            fd, tmp = temporary_beside(out)
            os.close(fd)
        yield tmp
        _usual_mode(tmp)
        os.replace(tmp, out)
    except (OSError, sqlite3.OperationalError) as e:   # sqlite3: 'database or disk is full'
        raise OutputError(f"cannot write {out} ({getattr(e, 'strerror', None) or e}); check free space and "
                          "permissions") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
            LIVE_TEMPORARIES.discard(tmp)
