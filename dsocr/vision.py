"""DeepSeek-OCR v1 vision side: SAM ViT-B encoder, CLIP-L on SAM features, linear projector.

Written from the facts of the vendor's deepencoder (sam_vary_sdpa.py, clip_sdpa.py, build_linear.py), read for
facts only; tests/test_crosscheck_vision.py compares it with transformers' port. Parameter names match
the official checkpoint with the prefixes `model.sam_model.`, `model.vision_model.` and `model.projector.`
removed, so `load_state_dict` takes the checkpoint's tensors after stripping the prefix.

One view batch flows as
    pixels (B,3,S,S) -> SamEncoder -> (B,1024,S/64,S/64) -> ClipEncoder -> (B,1+n,1024)
    fuse -> (B,n,2048) -> Projector -> (B,n,1280)          with n = (S/64)^2
Every branch depends on shapes only, so the modules also run on the meta device (FLOP counting).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsocr_perf.dsocr.config import ClipConfig, ProjectorConfig, SamConfig

SAM_LN_EPS = 1e-6
CLIP_LN_EPS = 1e-5


def resize_grid(table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a (1, C, h, w) map of learned position embeddings to (1, C, height, width).

    Bicubic with antialias, computed in float32 and cast back, as the reference does for SAM's 64x64 and
    CLIP's 16x16 grids.
    """
    resized = F.interpolate(table.float(), size=(height, width), mode="bicubic",
                            align_corners=False, antialias=True)
    return resized.to(table.dtype)


# ----------------------------------------------------------------------------------------------- SAM

class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map, independently at every pixel."""

    def __init__(self, channels: int, eps: float = SAM_LN_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.eps = eps
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)                                   # (B, H, W, C)
        x = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)                                # (B, C, H, W)


def relative_positions(table: torch.Tensor, size: int) -> torch.Tensor:
    """Gather a (2L-1, D) relative-position table into (size, size, D): out[q, k] = row for offset q - k.

    A table stored for another side L is first resized linearly (float32) to 2*size-1 rows.
    """
    rows = 2 * size - 1
    if table.shape[0] != rows:
        resized = F.interpolate(table.float().t().unsqueeze(0), size=rows, mode="linear")
        table = resized.squeeze(0).t().to(table.dtype)              # (rows, D)
    pos = torch.arange(size, device=table.device)
    offsets = pos[:, None] - pos[None, :] + (size - 1)              # (size, size) in [0, rows)
    return table[offsets]                                           # (size, size, D)


class SamAttention(nn.Module):
    """Multi-head attention over an (h, w) grid with a decomposed relative-position bias (MViTv2 style)."""

    def __init__(self, dim: int, heads: int, rel_side: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)                          # rows ordered Q | K | V
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.empty(2 * rel_side - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.empty(2 * rel_side - 1, self.head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
        nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def rel_pos_bias(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Additive logits bias (N, heads, h*w, h*w) from the unscaled query q (N, heads, h*w, D)."""
        n = q.shape[0]
        rh = relative_positions(self.rel_pos_h, h)                  # (h, h, D)
        rw = relative_positions(self.rel_pos_w, w)                  # (w, w, D)
        q = q.reshape(n, self.heads, h, w, self.head_dim)
        bias_h = torch.einsum("nahwd,hkd->nahwk", q, rh)            # (N, heads, h, w, h)
        bias_w = torch.einsum("nahwd,wkd->nahwk", q, rw)            # (N, heads, h, w, w)
        bias = bias_h[..., :, None] + bias_w[..., None, :]          # (N, heads, h, w, h, w)
        return bias.reshape(n, self.heads, h * w, h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape                                        # N = batch or batch * windows
        qkv = self.qkv(x).reshape(n, h * w, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)              # each (N, heads, h*w, D)
        bias = self.rel_pos_bias(q, h, w)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(D)
        y = y.transpose(1, 2).reshape(n, h, w, c)
        return self.proj(y)


class SamMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))                      # exact (erf) GELU


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padding bottom/right to a multiple of window."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))                        # (B, Hp, Wp, C)
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of window_partition: (B * windows, window, window, C) -> (B, h, w, C), padding cropped."""
    hp, wp = h + (-h % window), w + (-w % window)
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    return x[:, :h, :w, :]


class SamBlock(nn.Module):
    """Pre-norm transformer block; window > 0 attends inside window x window tiles, 0 attends globally."""

    def __init__(self, cfg: SamConfig, window: int):
        super().__init__()
        grid = cfg.img_size // cfg.patch_size
        self.window = window
        self.norm1 = nn.LayerNorm(cfg.width, eps=SAM_LN_EPS)
        self.attn = SamAttention(cfg.width, cfg.heads, rel_side=window if window else grid)
        self.norm2 = nn.LayerNorm(cfg.width, eps=SAM_LN_EPS)
        self.mlp = SamMLP(cfg.width, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:        # (B, h, w, C)
        y = self.norm1(x)
        if self.window:
            h, w = y.shape[1], y.shape[2]
            # padded cells take part as keys/values (no mask), as in the reference
            y = window_unpartition(self.attn(window_partition(y, self.window)), self.window, h, w)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).permute(0, 2, 3, 1)                # (B, S/16, S/16, C)


class SamEncoder(nn.Module):
    """SAM ViT-B image encoder with neck and two stride-2 convolutions: (B,3,S,S) -> (B, 1024, S/64, S/64)."""

    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size                       # 64: the pretraining grid
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.empty(1, grid, grid, cfg.width))
        self.blocks = nn.ModuleList(
            SamBlock(cfg, window=0 if i in cfg.global_attn_indexes else cfg.window_size)
            for i in range(cfg.depth))
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.width, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
        mid, out = cfg.downsample_channels
        self.net_2 = nn.Conv2d(cfg.out_chans, mid, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(mid, out, kernel_size=3, stride=2, padding=1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_embed                                        # (1, 64, 64, C)
        if pos.shape[1] != h or pos.shape[2] != w:
            pos = resize_grid(pos.permute(0, 3, 1, 2), h, w).permute(0, 2, 3, 1)  # (1, h, w, C)
        return pos

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)                                # (B, S/16, S/16, width)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)
        x = self.neck(x.permute(0, 3, 1, 2))                        # (B, out_chans, S/16, S/16)
        x = self.net_2(x)                                           # (B, 512, S/32, S/32)
        return self.net_3(x)                                        # (B, 1024, S/64, S/64)


# ---------------------------------------------------------------------------------------------- CLIP

class ClipEmbeddings(nn.Module):
    """Class token + position embeddings around SAM features; the patch conv is kept only for its weights."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.grid = cfg.image_size // cfg.patch_size                # 16
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        # In the checkpoint but never applied: CLIP reads SAM's feature map instead of pixels.
        self.patch_embedding = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size,
                                         stride=cfg.patch_size, bias=False)
        # _weight skips nn.Embedding's own normal_ init, whose first call on the meta device costs seconds
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.width,
                                               _weight=torch.empty(cfg.num_positions, cfg.width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.class_embedding, std=self.class_embedding.shape[0] ** -0.5)
        nn.init.trunc_normal_(self.position_embedding.weight, std=0.02)

    def positions(self, h: int, w: int) -> torch.Tensor:
        table = self.position_embedding.weight                     # (1 + 16*16, width)
        if h * w == self.grid * self.grid:
            return table
        cls, patches = table[:1], table[1:]
        patches = patches.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patches = resize_grid(patches, h, w).permute(0, 2, 3, 1).reshape(h * w, -1)
        return torch.cat([cls, patches])                            # (1 + h*w, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)                # (B, h*w, width), row-major
        cls = self.class_embedding.expand(b, 1, -1)
        x = torch.cat([cls, tokens], dim=1)                         # (B, 1 + h*w, width)
        return x + self.positions(h, w)


class ClipAttention(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv_proj = nn.Linear(cfg.width, 3 * cfg.width)         # rows ordered Q | K | V
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv_proj(x).reshape(b, t, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)              # each (B, heads, T, D)
        y = F.scaled_dot_product_attention(q, k, v)                 # non-causal, no mask
        return self.out_proj(y.transpose(1, 2).reshape(b, t, c))


class ClipMLP(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))               # quick GELU


class ClipLayer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=CLIP_LN_EPS)
        self.self_attn = ClipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=CLIP_LN_EPS)
        self.mlp = ClipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTransformer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipLayer(cfg) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipEncoder(nn.Module):
    """CLIP-L/14 transformer fed with SAM features: (B, C, h, w) -> (B, 1 + h*w, width). No post-LN."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = ClipEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=CLIP_LN_EPS)  # (sic) the checkpoint's spelling
        self.transformer = ClipTransformer(cfg)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(sam_features))        # (B, 1 + h*w, width)
        return self.transformer(x)


# ----------------------------------------------------------------------------------------- projector

class Projector(nn.Module):
    """Linear map of fused [CLIP | SAM] features into the decoder's embedding space (2048 -> 1280)."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.layers = nn.Linear(cfg.input_dim, cfg.n_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def fuse(clip_out: torch.Tensor, sam_features: torch.Tensor) -> torch.Tensor:
    """[CLIP without its class token | SAM flattened row-major] on channels: (B, h*w, clip_width + sam_channels)."""
    sam_tokens = sam_features.flatten(2).transpose(1, 2)            # (B, h*w, sam_channels)
    return torch.cat([clip_out[:, 1:], sam_tokens], dim=-1)
