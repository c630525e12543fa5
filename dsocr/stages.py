"""Stage names, defined once: the session emits them, the analysis groups by them, sql/ names them.

`stage(name)` opens one NVTX push/pop range in the `dsocr` domain (seen by Nsight Systems) and one
`torch.profiler.record_function` of the same name (seen by the PyTorch profiler). Both are cheap when
no profiler listens; `set_enabled(False)` turns them off entirely (used to measure their overhead).
This module imports neither torch nor nvtx at import time, so the analysis side can use the names.
"""
from __future__ import annotations

import contextlib

DOMAIN = "dsocr"

REQUEST = "request"          # one page (and repeat) of a dataset run
PREPROCESS = "preprocess"    # image load, resize, tiling, normalisation, tokenisation
PREFILL = "prefill"          # vision encoders + the decoder's prompt pass
SAM = "sam"                  # SAM ViT-B on one view batch (tiles, or the global view)
CLIP = "clip"                # CLIP-L on the SAM features of one view batch
PROJECTOR = "projector"      # fusion + linear projection of one view batch
LLM_PREFILL = "llm_prefill"  # decoder over the whole prompt
DECODE = "decode"            # all generated tokens
DECODE_STEP = "decode_step"  # one generated token (payload: step index)

# The stage table of `dsocr-analyze`: what a user sees first, in this order.
REPORTED_STAGES = (PREFILL, DECODE, SAM, CLIP, PROJECTOR)
# Nesting the session guarantees (child -> parent); the tests check it on real traces.

# The workload manifest rides inside the trace as one NVTX mark in DOMAIN whose text is a JSON object
# with "schema": MANIFEST_SCHEMA, so a .sqlite alone is enough for the analysis.
MANIFEST_SCHEMA = "dsocr-manifest/1"

_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def stage(name: str, payload: int | None = None):
    """One stage range: NVTX (domain `dsocr`) plus a profiler record_function with the same name."""
    if not _enabled:
        yield
        return
    import nvtx
    from torch.profiler import record_function

    nvtx.push_range(message=name, domain=DOMAIN, payload=payload)
    try:
        with record_function(name):
            yield
    finally:
        nvtx.pop_range(domain=DOMAIN)


def mark(text: str) -> None:
    """An instant NVTX mark in the dsocr domain (the manifest travels this way)."""
    import nvtx

    nvtx.mark(message=text, domain=DOMAIN)
