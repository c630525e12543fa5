"""Greedy decoding with a KV cache, EOS stop and the vendor's no-repeat n-gram rule (its
process/ngram_norepeat.py).

Step i (one `decode_step` range, payload i) picks token i from the current logits (banned n-gram
completions masked, argmax, one device->host read) and runs the decoder on it, so every step has the
same work: one decoder forward at KV length prompt + i + 1. The forward after the last token is one
more than Hugging Face's `generate` runs (it stops without it); it keeps every step alike in a trace.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from dsocr_perf.dsocr.stages import DECODE, DECODE_STEP, stage

NO_REPEAT_NGRAM_SIZE = 20   # HF `infer` default of the vendor code


class NoRepeatNGram:
    """Tokens that would complete an n-gram already present in the sequence (prompt included, as HF).

    Kept incrementally: (n-1)-token prefix -> tokens seen after it; each step costs one dict lookup.
    """

    def __init__(self, n: int, history: list[int] = ()):
        self.n = n
        self.tokens: list[int] = []
        self.followers: dict[tuple[int, ...], set[int]] = defaultdict(set)
        for t in history:
            self.append(t)

    def append(self, token: int) -> None:
        self.tokens.append(token)
        if self.n > 0 and len(self.tokens) >= self.n:
            self.followers[tuple(self.tokens[-self.n:-1])].add(token)

    def banned(self) -> set[int]:
        if self.n <= 0 or len(self.tokens) < self.n - 1:
            return set()
        prefix = tuple(self.tokens[len(self.tokens) - self.n + 1:]) if self.n > 1 else ()
        return self.followers.get(prefix, set())


@dataclass
class Generation:
    token_ids: list[int]         # generated tokens (EOS included when it stopped there)
    kv_lengths: list[int]        # KV length each decode step's forward attended over
    stopped_at_eos: bool


def greedy_decode(step: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, *, prompt_ids: list[int],
                  max_new_tokens: int, eos_id: int, ignore_eos: bool = False,
                  no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE,
                  before_close: Callable[[], None] | None = None) -> Generation:
    """`logits`: (1, vocab) after the prompt; `step(token (1,1)) -> logits` advances the KV cache by one.
    `before_close` runs inside the decode range just before it closes (the session's optional GPU sync)."""
    ngrams = NoRepeatNGram(no_repeat_ngram_size, prompt_ids)
    tokens, kv_lengths, at_eos = [], [], False
    kv = len(prompt_ids)
    with stage(DECODE):
        for i in range(max_new_tokens):
            with stage(DECODE_STEP, payload=i):
                banned = ngrams.banned()
                if banned:
                    logits = logits.index_fill(-1, torch.tensor(sorted(banned), device=logits.device),
                                               float("-inf"))
                next_id = logits.argmax(dim=-1, keepdim=True)          # (1, 1), stays on device
                token = int(next_id)                                   # the per-step host read
                tokens.append(token)
                ngrams.append(token)
                kv += 1
                logits = step(next_id)
                kv_lengths.append(kv)
            if token == eos_id and not ignore_eos:
                at_eos = True
                break
        if before_close is not None:
            before_close()
    return Generation(tokens, kv_lengths, at_eos)
