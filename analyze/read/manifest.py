"""The workload manifest of a trace, found by one rule in one place.

1. Embedded: nsys traces carry it as an NVTX mark in domain `dsocr` whose text is `dsocr:` plus a
   JSON object with "schema": "dsocr-manifest/1" (the first such mark); the capture's PyTorch-profiler
   traces carry it in their metadata (`dsocr_manifest`).
2. Beside the trace: NAME.json (analyze.paths.derived), for traces without one inside (the
   PyTorch profiler's, and exports made before the mark existed).

A manifest is only used when it is a JSON object of that schema, within the size and nesting a
real one has; anything else is ignored with a warning that says why (the analysis then runs
without FLOPs). Type errors inside (a workload field of the wrong type) are caught where the
numbers are computed and reported there.
"""
from __future__ import annotations

import json
from pathlib import Path

from dsocr_perf.analyze.paths import derived
from dsocr_perf.dsocr.stages import DOMAIN, MANIFEST_SCHEMA

MAX_BYTES = 16 << 20      # a real manifest is a few kB per page
MAX_DEPTH = 32


def find_manifest(path: Path, marks, embedded_json: str | None) -> tuple[dict | None, str | None, list[str]]:
    """(manifest, where it came from: 'embedded' | 'sidecar' | None, warnings).

    `marks`: (ts_ns, domain, text) of the trace's NVTX marks; `embedded_json`: the manifest text a
    profiler trace carries in its metadata."""
    warnings: list[str] = []
    candidates = [embedded_json] if embedded_json else []
    prefix = DOMAIN + ":{"
    candidates += [text[len(DOMAIN) + 1:] for _, domain, text in sorted((m for m in marks if m[0] is not None),
                                                                          key=lambda m: m[0])
                   if domain == DOMAIN and isinstance(text, str) and text.startswith(prefix)]
    for text in candidates:
        manifest, problem = parse(text)
        if manifest is not None:
            return manifest, "embedded", warnings
        if problem:
            warnings.append(f"the manifest inside the trace is not usable ({problem}); looking beside the trace")
    sidecar = derived(path, ".json")
    if sidecar == Path(path) or not sidecar.is_file():
        return None, None, warnings
    try:
        size = sidecar.stat().st_size
        if size > MAX_BYTES:
            raise ValueError(f"{size:,} bytes, more than a manifest holds")
        manifest, problem = parse(sidecar.read_bytes())
    except (OSError, ValueError) as e:
        manifest, problem = None, str(e)
    if manifest is not None:
        return manifest, "sidecar", warnings
    if problem:
        warnings.append(f"{sidecar} is not a usable dsocr manifest ({problem}): FLOPs, MFU and MBU are left out")
    return None, None, warnings


def parse(text) -> tuple[dict | None, str | None]:
    """(manifest, None) or (None, why not); a JSON value of another schema is (None, None)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not UTF-8 text"
    if len(text) > MAX_BYTES:
        return None, "too large"
    try:
        value = json.loads(text)
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError as e:
        return None, f"malformed JSON: {e}"
    if not isinstance(value, dict) or value.get("schema") != MANIFEST_SCHEMA:
        return None, None
    if _depth(value) > MAX_DEPTH:
        return None, "JSON nested too deeply"
    return value, None


def _depth(value, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
