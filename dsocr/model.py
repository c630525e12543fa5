"""DeepSeek-OCR v1 assembled: vision encoders -> image embeddings -> MoE decoder -> lm_head.

`DeepseekOCR.model` holds every checkpoint tensor under `model.` (sam_model, vision_model, projector,
image_newline, view_seperator, embed_tokens, layers, norm); `lm_head` sits beside it, as in the
official checkpoint (deepseek-ai/DeepSeek-OCR, one safetensors file: 2,710 tensors, 3,336,106,240 parameters;
`dsocr shapes` prints the table). Image embeddings are assembled as the vendor's deepseek_ocr.py does.
"""
from __future__ import annotations

import torch
from torch import nn

from dsocr_perf.dsocr.config import ModelConfig
from dsocr_perf.dsocr.decoder import Decoder, KVCache
from dsocr_perf.dsocr.errors import DsocrError
from dsocr_perf.dsocr.stages import CLIP, LLM_PREFILL, PROJECTOR, SAM, stage
from dsocr_perf.dsocr.vision import ClipEncoder, Projector, SamEncoder, fuse


class OCRModel(Decoder):
    """The decoder body plus the vision side and the two learned layout vectors."""

    def __init__(self, config: ModelConfig):
        super().__init__(config.decoder)
        self.sam_model = SamEncoder(config.sam)
        self.vision_model = ClipEncoder(config.clip)
        self.projector = Projector(config.projector)
        dim = config.projector.n_embed
        self.image_newline = nn.Parameter(torch.empty(dim).normal_(std=dim ** -0.5))   # after every grid row
        self.view_seperator = nn.Parameter(torch.empty(dim).normal_(std=dim ** -0.5))  # (sic) after the last view


class DeepseekOCR(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = OCRModel(config)
        self.lm_head = nn.Linear(config.decoder.hidden_size, config.decoder.vocab_size, bias=False)

    # ------------------------------------------------------------------------------------ vision
    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """One view batch (B, 3, S, S) -> projected tokens (B, n, C), n = (S/64)^2 row-major."""
        m = self.model
        pixels = pixels.to(device=m.image_newline.device, dtype=m.image_newline.dtype)
        with stage(SAM):
            sam = m.sam_model(pixels)                         # (B, 1024, S/64, S/64)
        with stage(CLIP):
            clip = m.vision_model(sam)                        # (B, 1 + n, 1024)
        with stage(PROJECTOR):
            return m.projector(fuse(clip, sam))               # (B, n, C)

    def with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """(rows, cols, C) -> (rows * (cols + 1), C): image_newline after every row."""
        rows, _, dim = grid.shape
        newline = self.model.image_newline.view(1, 1, dim).expand(rows, 1, dim)
        return torch.cat([grid, newline], dim=1).reshape(-1, dim)

    def image_embeddings(self, tiles: torch.Tensor | None, global_view: torch.Tensor,
                         tile_grid: tuple[int, int]) -> torch.Tensor:
        """[local block][global block][view_seperator] -> (image_tokens, C); tiles first, as the reference runs."""
        parts = []
        if tiles is not None:
            across, down = tile_grid
            local = self.encode_views(tiles)                   # (across*down, g*g, C), tiles row-major
            g = int(round(local.shape[1] ** 0.5))
            local = local.view(down, across, g, g, -1).permute(0, 2, 1, 3, 4)   # (down, g, across, g, C)
            parts.append(self.with_newlines(local.reshape(down * g, across * g, -1)))
        glob = self.encode_views(global_view)                  # (1, n_g*n_g, C)
        n_g = int(round(glob.shape[1] ** 0.5))
        parts.append(self.with_newlines(glob.view(n_g, n_g, -1)))
        parts.append(self.model.view_seperator[None])
        return torch.cat(parts)

    # ----------------------------------------------------------------------------------- decoder
    def new_cache(self, max_len: int) -> KVCache:
        return self.model.new_cache(max_len)

    def prefill(self, token_ids: list[int], image_embeds: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        """Prompt pass: returns float logits (1, vocab) of the LAST position only.

        (The vendor HF code computes lm_head for all prompt positions; only the last one is used.)
        Image embeddings are written, in order, into the positions holding the image token id.
        """
        image_id = self.config.image_token_id
        slots = sum(1 for t in token_ids if t == image_id)
        given = 0 if image_embeds is None else image_embeds.shape[0]
        if slots != given:
            raise DsocrError(f"the prompt has {slots} image placeholders but the image gives {given} embeddings")
        m = self.model
        with stage(LLM_PREFILL):
            ids = torch.tensor([token_ids], device=m.embed_tokens.weight.device)
            h = m.embed_tokens(ids)                            # (1, L, C)
            if given:
                h = h.masked_scatter((ids == image_id)[..., None], image_embeds.to(h.dtype))
            h = m(h, cache)
            return self.lm_head(h[:, -1]).float()

    def decode_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """token: (1, 1) ids on the model's device -> float logits (1, vocab) of the next position."""
        h = self.model(self.model.embed_tokens(token), cache)
        return self.lm_head(h[:, -1]).float()
