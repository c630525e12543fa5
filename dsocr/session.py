"""One DeepSeek-OCR session: a model on a device, a tokenizer, and `run_page` segmented into stage ranges.

    preprocess                       load + views + prompt tokens
    prefill
      sam, clip, projector           per view batch: tiles (if any), then the global view
      llm_prefill                    decoder over the whole prompt, lm_head on the last position
    decode
      decode_step (payload i)        one per generated token

`sync_stages=True` synchronises the GPU before each top-level stage closes, so `host_times_s` measure
the work; the default leaves the launches asynchronous (a faithful trace).

Two decode engines, same stage ranges: `faithful` (the default) runs the model's own decode step, as the
vendor code does; `fast` (dsocr/fast.py) replays one CUDA graph per step over a static KV cache. The
prefill is the faithful one in both; the fast engine's graph is captured before `prefill` opens.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsocr_perf.dsocr.config import ENGINES, ModelConfig, load_preset
from dsocr_perf.dsocr.errors import DsocrError
from dsocr_perf.dsocr.fast import FastDecoder
from dsocr_perf.dsocr.generate import NO_REPEAT_NGRAM_SIZE, greedy_decode
from dsocr_perf.dsocr.model import DeepseekOCR
from dsocr_perf.dsocr.output import clean_text
from dsocr_perf.dsocr.preprocess import ImageError, PreparedImage, load_image, prepare
from dsocr_perf.dsocr.stages import DECODE, PREFILL, PREPROCESS, stage
from dsocr_perf.dsocr.tokenizer import Tokenizer, load_tokenizer
from dsocr_perf.dsocr.weights import load_model, random_model
from dsocr_perf.dsocr.workload import MAX_TILES_HF, Workload

DEFAULT_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


@dataclass
class PageResult:
    text: str                       # decoded output, special tokens kept, trailing EOS removed
    token_ids: list[int]            # generated ids (EOS included when generation stopped there)
    workload: Workload
    generated_tokens: int
    decode_kv_lengths: list[int]    # KV length seen by each decode step
    host_times_s: dict[str, float]  # wall time per stage name (+ "total")
    peak_gpu_memory_bytes: int | None = None   # torch.cuda.max_memory_allocated over the page; None on CPU
    image: object = field(default=None, repr=False)   # the loaded RGB PIL image (for output files)

    @property
    def decode_ms_per_token(self) -> float | None:
        if not self.generated_tokens:
            return None
        return 1000.0 * self.host_times_s["decode"] / self.generated_tokens


def _device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DsocrError(f"unknown device {device!r}; use cuda or cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsocrError("CUDA is not available on this machine; use --device cpu (and --preset tiny)")
    if dev.type not in ("cuda", "cpu"):
        raise DsocrError(f"unsupported device {device!r}; use cuda or cpu")
    return dev


class Session:
    def __init__(self, model: DeepseekOCR, tokenizer: Tokenizer, device: torch.device, dtype: torch.dtype,
                 weights_source: str, seed: int, engine: str = "faithful"):
        self.model = model
        self.tokenizer = tokenizer
        self.config: ModelConfig = model.config
        self.device = device
        self.dtype = dtype
        self.weights_source = weights_source
        self.seed = seed
        self.engine = engine
        self.fast = FastDecoder(model) if engine == "fast" else None

    @classmethod
    def create(cls, preset: str = "official", weights: str | None = None, seed: int = 0, device: str = "cuda",
               dtype: torch.dtype | None = None, engine: str = "faithful") -> "Session":
        """weights=None -> seeded random weights of the preset's architecture; engine: faithful or fast."""
        if engine not in ENGINES:
            raise DsocrError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        try:
            config = load_preset(preset)
        except ValueError as exc:
            raise DsocrError(str(exc)) from None
        dev = _device(device)
        dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        if weights is None:
            model, source = random_model(config, dev, dtype, seed), "random"
        else:
            model, source = load_model(config, weights, dev, dtype), str(Path(weights))
        return cls(model, load_tokenizer(weights), dev, dtype, source, seed, engine)

    @contextmanager
    def _timed(self, name: str, times: dict[str, float], sync: bool):
        start = time.perf_counter()
        with stage(name):
            yield
            if sync and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        times[name] = time.perf_counter() - start

    def prepare_page(self, image, *, mode: str = "gundam", prompt: str = DEFAULT_PROMPT,
                     max_tiles: int = MAX_TILES_HF) -> tuple[object, PreparedImage, list[int]]:
        """What `preprocess` covers: (the RGB PIL image, its views and workload, the prompt token ids)."""
        try:
            pil = load_image(image)
            text_tokens = self.tokenizer.text_tokens(prompt)
            views = prepare(pil, mode, max_tiles=max_tiles, text_tokens=text_tokens)
        except (ImageError, ValueError) as exc:
            raise DsocrError(str(exc)) from None
        prompt_ids = self.tokenizer.prompt_ids(prompt, views.workload.image_tokens)
        assert len(prompt_ids) == views.workload.prompt_tokens, (len(prompt_ids), views.workload)
        return pil, views, prompt_ids

    @torch.inference_mode()
    def run_page(self, image, *, mode: str = "gundam", prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 256,
                 ignore_eos: bool = False, max_tiles: int = MAX_TILES_HF, sync_stages: bool = False,
                 no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE) -> PageResult:
        if max_new_tokens < 1:
            raise DsocrError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times: dict[str, float] = {}
        start = time.perf_counter()

        with self._timed(PREPROCESS, times, sync_stages):
            pil, views, prompt_ids = self.prepare_page(image, mode=mode, prompt=prompt, max_tiles=max_tiles)
            workload = views.workload

        # fast engine: the static cache and CUDA graph of this capacity (captured here on first use, outside the ranges)
        static = self.fast.prepare(workload.prompt_tokens + max_new_tokens) if self.fast else None
        with self._timed(PREFILL, times, sync_stages):
            cache = static.cache if static else self.model.new_cache(workload.prompt_tokens + max_new_tokens)
            image_embeds = self.model.image_embeddings(views.tiles, views.global_view, workload.tile_grid)
            logits = self.model.prefill(prompt_ids, image_embeds, cache)
            step = static.start() if static else (lambda token: self.model.decode_step(token, cache))

        t0 = time.perf_counter()
        gen = greedy_decode(step, logits, prompt_ids=prompt_ids,
                            max_new_tokens=max_new_tokens, eos_id=self.config.decoder.eos_token_id,
                            ignore_eos=ignore_eos, no_repeat_ngram_size=no_repeat_ngram_size,
                            before_close=(lambda: torch.cuda.synchronize(self.device)) if sync_stages and cuda else None)
        times[DECODE] = time.perf_counter() - t0
        times["total"] = time.perf_counter() - start

        return PageResult(
            text=clean_text(self.tokenizer.decode(gen.token_ids)),
            token_ids=gen.token_ids,
            workload=workload,
            generated_tokens=len(gen.token_ids),
            decode_kv_lengths=gen.kv_lengths,
            host_times_s=times,
            peak_gpu_memory_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
            image=pil,
        )
