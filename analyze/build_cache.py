"""`python -m dsocr_perf.analyze.build_cache TRACE`: the detached process that writes a big trace's
cache after a command has answered (analyze.cache.store_after_answer). It opens the trace afresh,
writes the cache, and removes its marker; errors leave no cache, and the next command computes."""
from __future__ import annotations

import sys
from pathlib import Path

from dsocr_perf.analyze import cache
from dsocr_perf.analyze.trace import open_trace


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    try:
        key = cache.key_of(path)             # the trace as it is before the read: store() checks it again
        trace = open_trace(path, cache=False)
        trace.cache_key = key
        cache.store(trace)
    except Exception:  # noqa: BLE001 - nobody reads this process's output; no cache is the only effect
        return 1
    finally:
        cache.building_marker(path).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
