"""The dsocr manifest saved beside a trace: `run.sqlite` / `run.pt.trace.json.gz` -> `run.json`.

nsys traces carry the manifest inside (an NVTX mark); the PyTorch profiler has no marks, so for its
traces, and for exports made before the mark existed, the file the capture writes beside them is
the source.
"""
from __future__ import annotations

import json
from pathlib import Path

from dsocr_perf.dsocr.stages import MANIFEST_SCHEMA

TRACE_SUFFIXES = (".pt.trace.json.gz", ".pt.trace.json", ".sqlite.gz", ".sqlite", ".json.gz", ".json")


def sidecar_manifest(path: Path) -> dict | None:
    """The manifest in NAME.json beside the trace file, or None when there is no valid one."""
    path = Path(path)
    name = path.name
    for suffix in TRACE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    sidecar = path.with_name(name + ".json")
    if sidecar == path or not sidecar.is_file():
        return None
    try:
        manifest = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("schema") == MANIFEST_SCHEMA:
        return manifest
    return None
