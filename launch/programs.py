"""Find an NVIDIA command-line tool (nsys, ncu) and ask its version.

Search order (first hit wins): the tool's command-line option (a file, or a folder holding the tool),
its environment variable, `PATH`, then install folders given as globs under the file-system root
(newest version first). A test passes a fake root and environment.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dsocr_perf.launch.errors import LaunchError


@dataclass(frozen=True)
class Program:
    path: Path
    found_by: str   # which rule of the search order found it
    version: str    # e.g. "2025.3.1.90-253135822126v0", or "unknown"


@dataclass(frozen=True)
class SearchOrder:
    name: str                        # the executable's file name: "nsys"
    flag: str                        # the command-line option that names it: "--nsys"
    env_var: str                     # "NSYS"
    install_globs: tuple[str, ...]   # relative to the root: "usr/local/cuda*/bin/nsys"

    def places(self) -> list[str]:
        """Every place searched, as an error message names them."""
        return [self.flag, "$" + self.env_var, "PATH", *("/" + g.rsplit("/", 1)[0] for g in self.install_globs)]


def executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def version_key(path: str) -> list:
    """Natural sort key: cuda-12.10 after cuda-12.9, 2025.3.1 after 2024.6.2."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def candidates(order: SearchOrder, explicit: str | None = None, env: dict | None = None, root: str = "/"):
    """(path, rule) pairs in search order; existence is checked by `find_program`."""
    env = os.environ if env is None else env
    if explicit:
        p = Path(explicit)
        yield (p / order.name if p.is_dir() else p), order.flag
        return
    if env.get(order.env_var):
        p = Path(env[order.env_var])
        yield (p / order.name if p.is_dir() else p), "$" + order.env_var
    on_path = shutil.which(order.name, path=env.get("PATH", ""))
    if on_path:
        yield Path(on_path), "PATH"
    for pattern in order.install_globs:
        for hit in sorted(glob.glob(os.path.join(root, pattern)), key=version_key, reverse=True):
            yield Path(hit), "/" + pattern.rsplit("/", 1)[0]


def find_program(order: SearchOrder, explicit: str | None, env: dict | None, root: str, *, title: str,
                 advice: str) -> Program:
    """The first executable candidate, or LaunchError: '<title> not found; looked in ... <advice>'."""
    for path, rule in candidates(order, explicit, env, root):
        if executable(path):
            return Program(path, rule, program_version(path))
        if rule in (order.flag, "$" + order.env_var):
            raise LaunchError(f"{rule} points to {path}, which is not an executable {order.name}; "
                              f"give the path of the {order.name} program (or its folder)")
    raise LaunchError(f"{title} not found; looked in {', '.join(order.places())}. {advice}")


def program_version(path: Path) -> str:
    """`nsys --version`: '... version 2025.3.1.90-...'; `ncu --version`: '... Version 2025.3.1.0 (build ...)'."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"version\s+(\S+)", out.stdout + out.stderr, flags=re.IGNORECASE)
    return m.group(1) if m else "unknown"
