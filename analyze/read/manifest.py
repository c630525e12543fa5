"""The workload manifest of a trace, found by one rule in one place.

1. Embedded: nsys traces carry it as an NVTX mark in domain `dsocr` whose text is `dsocr:` plus a
   JSON object with "schema": "dsocr-manifest/1" (the first such mark); the capture's PyTorch-profiler
   traces carry it in their metadata (`dsocr_manifest`).
2. Beside the trace: NAME.json (analyze.paths.derived), for traces without one inside (the
   PyTorch profiler's, and exports made before the mark existed).

A manifest is only used when it is a JSON object of that schema, within the size and nesting a
real one has, and every number of its workloads and model config is a finite, non-negative number
of plausible size (no negative token count, no 10**9 decoder layers: the FLOPs model loops over
layers and decode steps); anything else is ignored with a warning that says why (the analysis then
runs without FLOPs). Type errors inside (a workload field of the wrong type) are caught where the
numbers are computed and reported there.
"""
from __future__ import annotations

import json
from pathlib import Path

from dsocr_perf.analyze.paths import derived
from dsocr_perf.dsocr.stages import DOMAIN, MANIFEST_SCHEMA

MAX_BYTES = 16 << 20      # a real manifest is a few kB per page
MAX_DEPTH = 32
MAX_NUMBER = 1 << 24      # pixels, tokens, widths, vocabulary: a real one is far below
MAX_LOOP = 1 << 10        # layers, views, heads: what the FLOPs model loops over
MAX_LIST = 1 << 16        # decode steps (KV lengths) of one request
REAL_KEYS = frozenset({"rms_norm_eps", "rope_theta", "layer_norm_eps", "eps"})   # every other number is a count or size
LOOP_KEYS = frozenset({"num_hidden_layers", "depth", "layers", "count", "num_attention_heads", "num_key_value_heads",
                       "heads", "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "tile_grid", "views"})


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
    problem = implausible(value)
    if problem:
        return None, problem
    return value, None


def implausible(manifest: dict) -> str | None:
    """Why the numbers of a manifest cannot be a real capture's, or None."""
    parts = [("workload", manifest.get("workload")), ("model.config", (manifest.get("model") or {}).get("config")
                                                      if isinstance(manifest.get("model"), dict) else None)]
    pages = manifest.get("pages")
    if isinstance(pages, list):
        parts += [(f"pages[{i}].workload", p.get("workload")) for i, p in enumerate(pages) if isinstance(p, dict)]
    for where, part in parts:
        problem = _numbers(part, where, MAX_NUMBER)
        if problem:
            return problem
    return None


def _numbers(value, where: str, limit: int) -> str | None:
    if isinstance(value, bool):
        return f"{where} is true/false where a number belongs"
    if isinstance(value, (int, float)):
        if not (0 <= value <= limit):   # also NaN and the infinities
            return f"{where} = {value!r}, not a number between 0 and {limit:,}"
        if isinstance(value, float) and not value.is_integer() and where.rsplit(".", 1)[-1] not in REAL_KEYS:
            return f"{where} = {value!r}, not a whole number"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _numbers(item, f"{where}.{key}", MAX_LOOP if key in LOOP_KEYS else limit)
            if problem:
                return problem
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            return f"{where} lists {len(value):,} values, more than {MAX_LIST:,}"
        for i, item in enumerate(value):
            problem = _numbers(item, f"{where}[{i}]", limit)
            if problem:
                return problem
    return None


def _depth(value, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
