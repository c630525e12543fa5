"""What the capture side needs beyond the analysis side, and the one line that says how to get it.

`pip install dsocr-perf` installs the analysis side only; the DeepSeek-OCR session, `dsocr-trace` and `dsocr`
need the `capture` extra (torch, pillow, nvtx, ...). Imports nothing heavy unless asked to check."""
from __future__ import annotations

import argparse
import importlib
from importlib.metadata import PackageNotFoundError, version

# module -> distribution that provides it
CAPTURE_MODULES = {"torch": "torch", "PIL": "pillow", "nvtx": "nvtx", "safetensors": "safetensors",
                   "tokenizers": "tokenizers"}
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def missing_capture_modules() -> list[str]:
    """Distributions of the capture extra that cannot be imported here."""
    missing = []
    for module, dist in CAPTURE_MODULES.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module and not (e.name or "").startswith(module + "."):
                raise
            missing.append(dist)
    return missing


def capture_extra_hint(program: str, missing: list[str]) -> str:
    return (f"{program} needs the capture side, which is not installed here (missing: {', '.join(missing)}): "
            f"pip install 'dsocr-perf[capture]' (from a clone: pip install -e '.[capture]'; on a machine without "
            f"a GPU, first {CPU_TORCH})")


def package_version() -> str:
    try:
        return version("dsocr-perf")
    except PackageNotFoundError:
        return "unknown"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds '(default: X)' to an option's help unless the help already names its default or it has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings or text == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
