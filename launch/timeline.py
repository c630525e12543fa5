"""Where the wall time of one `dsocr-trace` run went: the launcher's phases and, inside each, the child's.

The child session prints one line per phase, `[nsys pass] model load (...): 2.1 s`; `Timeline.watch` reads
them from the streamed output, `Timeline.phase_done` records the launcher's own phases, and `summary` makes
the closing lines:

    time: total 58.2 s
      capture 33.1 s (python + torch import 4.2, model load 2.1, warm-up 6.3, measured pages 7.1, other 13.4)
      export 1.8 s
      profiler pass 19.5 s (...)
      checks and writing 3.0 s

"other" is what a phase took beyond the child's own phases: the profiler starting and finishing (nsys
writing its report), the interpreter starting, the child's exit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

CHILD_LINE = re.compile(r"^\s*\[(?P<pass>[\w-]+) pass\] (?P<what>.+): (?P<seconds>\d+(?:\.\d+)?) s$")


def short(what: str) -> str:
    """'model load (official, weights random, bfloat16)' -> 'model load'."""
    return what.split(" (")[0]


@dataclass
class Phase:
    name: str
    seconds: float
    inner: list[tuple[str, float]] = field(default_factory=list)   # the child's phases during this one


class Timeline:
    def __init__(self):
        self.phases: list[Phase] = []
        self._pending: list[tuple[str, float]] = []

    def watch(self, line: str) -> None:
        """Called with every line of a child's output."""
        m = CHILD_LINE.match(line)
        if m:
            self._pending.append((short(m["what"]), float(m["seconds"])))

    def phase_done(self, name: str, seconds: float) -> None:
        self.phases.append(Phase(short(name), seconds, self._pending))
        self._pending = []

    def summary(self, total: float) -> list[str]:
        lines = [f"time: total {total:.1f} s"]
        for p in self.phases:
            text = f"  {p.name} {p.seconds:.1f} s"
            if p.inner:
                rest = p.seconds - sum(s for _, s in p.inner)
                inner = [f"{what} {s:.1f}" for what, s in p.inner] + [f"other {rest:.1f}"]
                text += f" ({', '.join(inner)})"
            lines.append(text)
        lines.append(f"  checks and writing {total - sum(p.seconds for p in self.phases):.1f} s")
        return lines
