"""What every case of the hostile corpus checks, in one place.

`check(capsys, *args, code=..., watch=[...])` runs `dsocr-analyze ARGS` in-process and asserts:
- the exit status is the documented one (0 ok, 2 usage, 3 bad input, 4 cannot write, 130 interrupted);
- no traceback anywhere; on failure exactly one stderr line `Error: <what>; <what to do>` that names
  the file when the case says which (`names=`); on success stderr holds only `Warning:` lines (and
  `wrote ...` for the outputs that announce themselves there);
- every watched folder (the trace's, the victim files of a sandbox escape, the cache) is unchanged,
  byte for byte and name for name: nothing written beside the trace, no `.part` litter;
- no temporary file of the cache writer is left in the cache folder.
`document(out)` parses `--json` strictly (NaN/Infinity refused) and checks the invariants every valid
analysis keeps.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import stat
from pathlib import Path

from cli_helper import run_analyze

# What-to-do words: a message that has none only says what went wrong.
INSTRUCTION = re.compile(r"\b(give|pass|use|check|copy|export|re-?export|capture|create|rerun|run|choose|free|list|"
                         r"see|set|remove|fix|put|query|close|analyse|install|try|save|wrap|report|delete)\b")
EXIT = {"ok": 0, "usage": 2, "input": 3, "output": 4, "interrupted": 130}


def snapshot(*folders: Path) -> dict:
    """Every entry under the folders (symlinks not followed): name -> content hash / link target / kind."""
    out = {}
    for folder in folders:
        folder = Path(folder)
        if not os.path.lexists(folder):
            out[str(folder)] = "absent"
            continue
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = Path(root) / name
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    out[str(path)] = ("link", os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    out[str(path)] = ("file", _digest(path), st.st_size)
                elif stat.S_ISDIR(st.st_mode):
                    out[str(path)] = ("dir",)
                else:
                    out[str(path)] = ("other", stat.S_IFMT(st.st_mode))
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def escaped(text: str) -> str:
    """A name as the one-line error shows it (control characters escaped)."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for ch in str(text))


def cache_litter() -> list[str]:
    from dsocr_perf.analyze.cache import cache_dir

    folder = cache_dir()
    return sorted(p.name for p in folder.glob(".dsocr-cache-*")) if folder.is_dir() else []


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def error(self) -> str:
        return self.err.strip()

    def warnings(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("Warning: ")]


def check(capsys, *args, code: int = 0, watch=(), names=None, stderr_ok=("Warning: ", "wrote ")) -> Result:
    before = snapshot(*watch)
    with deadline(60):
        status, out, err = run_analyze(capsys, *args)
    result = Result(status, out, err)
    assert "Traceback" not in out + err, err
    assert status == code, (status, err[-2000:])
    if code:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), err
        assert INSTRUCTION.search(lines[0].split(":", 1)[1]), f"no what-to-do in: {lines[0]}"
        if names is not None:
            shown = [escaped(n) for n in (names if isinstance(names, (list, tuple)) else [names])]
            assert any(s in lines[0] for s in shown), (shown, lines[0])
    else:
        assert all(line.startswith(stderr_ok) for line in err.splitlines()), err
    assert snapshot(*watch) == before, "a watched folder changed"
    assert not cache_litter(), cache_litter()
    return result


def _refuse(constant):
    raise ValueError(f"{constant} in JSON output")


def document(out: str) -> dict:
    """--json output parsed strictly, with the invariants of a valid analysis checked."""
    doc = json.loads(out, parse_constant=_refuse)
    invariants(doc)
    return doc


def invariants(doc: dict, self_nested: tuple = ()) -> None:
    """`self_nested`: range names with an instance inside an instance of the same name, whose times
    are summed per instance (nsys nvtx_kern_sum), so they may exceed the trace's kernel time."""
    totals = doc["totals"]
    kernel_ns = totals["kernel_ns"]
    assert 0 <= totals["attributed_ns"] <= kernel_ns
    _no_negative_durations(doc)
    keys = None
    exclusive = 0
    for r in doc["ranges"]:
        keys = keys or set(r)
        assert set(r) == keys, f"range entries with different keys: {r['name']}"
        assert 0 <= r["busy_ns"] <= r["inclusive_ns"] <= (kernel_ns if r["name"] not in self_nested else 1 << 62), r
        assert 0 <= r["exclusive_ns"] <= r["inclusive_ns"], r
        exclusive += r["exclusive_ns"]
        assert sum(r["idle_causes_ns"].values()) == r["idle_ns"], r
    assert exclusive <= kernel_ns
    for step in doc.get("steps") or []:
        assert set(step) == set(doc["steps"][0])


def _no_negative_durations(value, where="") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (k.endswith("_ns") or k.endswith("_ms")) \
                    and not k.startswith(("first_", "last_", "start", "end", "gpu_start", "gpu_end")):
                assert v >= 0, f"negative {where}.{k} = {v}"
            _no_negative_durations(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_negative_durations(v, f"{where}[{i}]")


def numbers(doc: dict) -> dict:
    """The attribution of a --json document in BASE_TRUTH's shape."""
    return {"kernels": doc["totals"]["kernels"], "kernel_ns": doc["totals"]["kernel_ns"],
            "attributed_ns": doc["totals"]["attributed_ns"],
            "ranges": {r["name"]: (r["instances"], r["inclusive_ns"], r["exclusive_ns"], r["busy_ns"], r["kernels"])
                       for r in doc["ranges"]}}


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging (a FIFO read, a lock): SIGALRM in the main thread."""
    def expired(signum, frame):
        raise TimeoutError(f"the command ran over {seconds} s")

    if not hasattr(signal, "setitimer"):
        yield
        return
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
