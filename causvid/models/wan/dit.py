"""WanDiT: the Wan2.1 text-to-video diffusion transformer, one module for every attention mode.

The same weights run bidirectionally (the Wan teacher), block-causally (the autoregressive student, framewise
or chunkwise), in Causal Forcing's teacher-forcing layout (clean context ‖ noisy targets) and as a KV-cached
streaming model. Parameter names are those of Wan's original checkpoints, so the original files load without
renaming; diffusers names are mapped in `checkpoints.py`.

Shapes: latents x [B, F, C, H, W] (F latent frames), timesteps t [B, F] in 0..1000 (one per frame; [B]
broadcasts), text context [B, L <= text_len, text_dim]. Output: Wan's flow prediction (noise - x0), [B, F, C, H, W].
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from causvid.flow import x0_to_flow

from .attention import MaskSpec, attention
from .kv_cache import KVCache
from .presets import WanConfig, get_preset
from .rope import apply_rope, rope_angles, rope_angles_at


#: Floor of sigma when an x0 head's output is turned into flow (WanConfig.prediction = "x0").
X0_MIN_SIGMA = 0.05


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of t * 10000^(-i/half), in float64 (t used raw, 0..1000)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (as Wan does under bf16), returned in the input dtype. The affine weights are
    taken in fp32 too: a model cast to bf16 would otherwise hand fp32 activations bf16 weights, which
    F.layer_norm refuses."""

    def forward(self, x):
        weight, bias = (None if p is None else p.float() for p in (self.weight, self.bias))
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class Attention(nn.Module):
    """q, k, v, o projections with RMSNorm on q and k across all heads (Wan's qk_norm)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def heads(self, x):
        return x.unflatten(-1, (self.num_heads, -1))

    def self_attention(self, x, rope, mask, cache, sp=None):
        """cache: this layer's `CacheCall`, or None. rope: the query tokens' (cos, sin), and the keys' as a third
        and fourth entry when the cache keeps keys un-rotated (rope_positions="window"): they are then rotated
        after the read, at window positions. sp: a `SequenceShard` (x holds this rank's token pieces), or None;
        everything after the exchange sees the whole sequence for this rank's heads."""
        q, k, v = self.heads(self.norm_q(self.q(x))), self.heads(self.norm_k(self.k(x))), self.heads(self.v(x))
        if sp is not None:
            q, k, v = sp.to_heads(torch.cat([q, k, v])).chunk(3)
        q = apply_rope(q, *rope[:2])
        k = apply_rope(k, *rope[:2]) if len(rope) == 2 else k
        if cache is not None:
            k, v = cache.update(k, v)
            k = apply_rope(k, *rope[2:]) if len(rope) == 4 else k
        out = attention(q, k, v, mask)
        return self.o((out if sp is None else sp.to_sequence(out)).flatten(2))

    def cross_attention(self, x, context, cache):
        """context: the embedded prompt, or None to use the K/V the cache (a `CacheCall`) holds for it."""
        kv = cache.cross if cache is not None and context is None else None
        if kv is None:
            kv = (self.heads(self.norm_k(self.k(context))), self.heads(self.v(context)))
            if cache is not None:
                cache.set_cross(kv)
        q = self.heads(self.norm_q(self.q(x)))
        return self.o(attention(q, *kv).flatten(2))


def _per_frame(x, mod):
    """View tokens [B, Fs*S, D] as [B, Fs, S, D] to apply a per-frame modulation mod [B, Fs, D]."""
    return x.unflatten(1, (mod.shape[1], -1)), mod[:, :, None]


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.norm1 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm(dim, cfg.eps, elementwise_affine=True)  # cross-attn norm (Wan's name)
        self.cross_attn = Attention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))

    def forward(self, x, e0, context, rope, mask, cache, sp=None):
        """x [B, L, D]; e0 [B, Fs, 6, D] per-frame time projection (fp32); cache: this layer's `CacheCall`;
        sp: a `SequenceShard` when x holds this rank's pieces of every frame (sequence parallelism), or None."""
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = (self.modulation.float()[:, None] + e0).unbind(2)

        xs, scale = _per_frame(self.norm1(x).float(), scale_msa)
        h = (xs * (1 + scale) + shift_msa[:, :, None]).flatten(1, 2).to(x.dtype)
        y, gate = _per_frame(self.self_attn.self_attention(h, rope, mask, cache, sp).float(), gate_msa)
        x = (x.float() + (y * gate).flatten(1, 2)).to(x.dtype)

        x = x + self.cross_attn.cross_attention(self.norm3(x), context, cache)

        xs, scale = _per_frame(self.norm2(x).float(), scale_ffn)
        h = (xs * (1 + scale) + shift_ffn[:, :, None]).flatten(1, 2).to(x.dtype)
        y, gate = _per_frame(self.ffn(h).float(), gate_ffn)
        return (x.float() + (y * gate).flatten(1, 2)).to(x.dtype)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e):
        """e [B, F, D]: the time embedding itself (not the 6-way projection), as in Wan."""
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).unbind(2)
        xs, scale = _per_frame(self.norm(x).float(), scale)
        return self.head((xs * (1 + scale) + shift[:, :, None]).flatten(1, 2).to(x.dtype))


class WanDiT(nn.Module):
    def __init__(self, config: WanConfig = None, **overrides):
        super().__init__()
        cfg = (config or WanConfig()).with_overrides(**overrides)
        self.config = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.gradient_checkpointing = False
        self.sequence_parallel = None  # a `SequenceParallel` hook: split the tokens over its group (None: don't)
        self._init_weights()

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "WanDiT":
        """A randomly initialised model of a named size (`presets.PRESETS`), fields overridable by name."""
        return cls(get_preset(name), **overrides)

    @classmethod
    def from_pretrained(cls, path, preset: str = None, use_ema: bool = False, dtype=None, device=None,
                        **overrides) -> "WanDiT":
        """Load a Wan folder, a diffusers folder or a published CausVid / Self-Forcing / Causal-Forcing `.pt`."""
        from .checkpoints import load_wan_dit
        return load_wan_dit(cls, path, preset=preset, use_ema=use_ema, dtype=dtype, device=device, **overrides)

    @classmethod
    def open_pretrained(cls, path, preset: str = None, use_ema: bool = False, dtype=None, **overrides) -> tuple:
        """(the model built on the meta device, the checkpoint's tensors unread), for a caller that places the
        parameters first (sharding) and then reads only what each holds (`checkpoints.fill`)."""
        from .checkpoints import open_wan_dit
        return open_wan_dit(cls, path, preset=preset, use_ema=use_ema, dtype=dtype, **overrides)

    def _init_weights(self):
        # Wan's initialisation: xavier linears, N(0, 0.02) embedding MLPs, zero output head (a model trained
        # from scratch starts by predicting zero flow). Loading weights overwrites all of it.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def new_cache(self, batch_size: int, max_frames: int = None, local_attn_size: int = -1,
                  sink_size: int = 0, gradient: str = "straight_through", rope_positions: str = "absolute") -> KVCache:
        """A streaming cache for this model: global (max_frames) or a rolling window of local_attn_size frames;
        `gradient`: how training's gradient crosses blocks through it; `rope_positions`: frame indices or ranks
        in the window (see KVCache)."""
        return KVCache(len(self.blocks), batch_size, max_frames, local_attn_size, sink_size, gradient,
                       rope_positions)

    # -- pieces of the forward ----------------------------------------------------------------------
    def patchify(self, x):
        """[B, F, C, H, W] -> tokens [B, F*h*w, dim] and the patch grid (f, h, w)."""
        y = self.patch_embedding(x.transpose(1, 2).to(self.patch_embedding.weight.dtype))
        return y.flatten(2).transpose(1, 2), tuple(y.shape[2:])

    def unpatchify(self, tokens, grid):
        (f, h, w), (pt, ph, pw), c = grid, self.config.patch_size, self.config.out_dim
        x = tokens.view(tokens.shape[0], f, h, w, pt, ph, pw, c)
        return x.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(tokens.shape[0], f * pt, c, h * ph, w * pw)

    def embed_time(self, t):
        """t [B, F] -> e [B, F, dim] (head modulation) and e0 [B, F, 6, dim] (block modulation), in fp32."""
        dtype = self.time_embedding[0].weight.dtype
        e = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim).to(dtype)).float()
        e0 = self.time_projection(e.to(dtype)).float().unflatten(-1, (6, -1))
        return e, e0

    def embed_text(self, context):
        """Zero-pad to text_len (Wan pads before the MLP, so padded rows are attended too), then the text MLP."""
        length = context.shape[1]
        if length > self.config.text_len:
            raise ValueError(f"text context has {length} tokens; this model takes at most text_len={self.config.text_len}")
        context = F.pad(context, (0, 0, 0, self.config.text_len - length))
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))

    @staticmethod
    def _frame_timesteps(t, batch, frames):
        t = torch.as_tensor(t, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)
        if tuple(t.shape) != (batch, frames):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{batch}, {frames}], got {tuple(t.shape)}")
        return t

    def _context_trains(self) -> bool:
        """Whether anything between the prompt and the cross-attention K/V has a trained parameter."""
        cross = self.blocks[0].cross_attn
        return any(p.requires_grad for m in (self.text_embedding, cross.k, cross.v, cross.norm_k)
                   for p in m.parameters())

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x, t, context, *, causal: bool = False, num_frame_per_block: int = 1,
                local_attn_size: int = -1, sink_size: int = 0, clean_x=None, clean_t=None,
                cache: KVCache = None, start_frame: int = 0, independent_first_frame: bool = False):
        """Flow prediction for latents x [B, F, C, H, W] at timesteps t ([B, F] or [B]); an x0 head's output
        (`WanConfig.prediction`) is returned as the flow it implies.

        causal:          block-causal attention over blocks of `num_frame_per_block` frames (bidirectional
                         inside a block); False = Wan's full bidirectional attention.
        independent_first_frame: frame 0 is a block of its own ([1, N, N, ...], Self-Forcing's layout).
        local_attn_size: attend to at most this many frames (-1: all), always keeping the first `sink_size`.
        clean_x:         teacher forcing: the clean latents [B, F, C, H, W] of the same frames (timestep
                         `clean_t`, default 0) form the context; each noisy block sees its own block and the
                         clean blocks before it. Only the noisy half is returned.
        cache:           streaming: a `new_cache()` object; x holds only the current block, starting at
                         absolute frame `start_frame`. Its K/V are written into the cache and the block attends
                         to everything cached (the cache's own window). `context` may then be None once the
                         cache holds the prompt's cross-attention K/V.
        """
        batch, frames = x.shape[:2]
        t = self._frame_timesteps(t.to(x.device) if torch.is_tensor(t) else t, batch, frames).to(x.device)
        sp, enter = None, lambda inputs: inputs  # sequence parallelism: this forward's token pieces
        if self.sequence_parallel is not None:
            _, ph, pw = self.config.patch_size
            sp = self.sequence_parallel.shard(x.shape[3] // ph * (x.shape[4] // pw))
            enter = sp.enter  # inputs of the DiT, before any parameter touches them (see sequence_parallel.py)
        tokens, grid = self.patchify(enter(x))
        frame_tokens = grid[1] * grid[2]
        e, e0 = self.embed_time(t)
        rope = rope_angles(grid[0], grid[1], grid[2], self.config.head_dim, start_frame=start_frame, device=x.device)
        mask = None

        if cache is not None:
            if clean_x is not None:
                raise ValueError("teacher forcing (clean_x) and a KV cache cannot be combined")
            cache.begin(start_frame, grid[0], frame_tokens, x.device, batch=x.shape[0])
            if cache.rope_frames() is not None:  # positions inside the window: queries' and keys' (see KVCache)
                rope = tuple(r for positions in cache.rope_frames() for r in rope_angles_at(
                    positions.to(x.device), grid[1], grid[2], self.config.head_dim))
            if cache.holds_context(context):
                # cross-attention K/V are already in the cache; a call with gradient recomputes them, as
                # Self-Forcing's exit step does, so the text embedding and cross-attention K/V train (a LoRA's
                # adapter on cross_attn.k / .v too, with the text embedding frozen)
                if not (torch.is_grad_enabled() and self._context_trains()):
                    context = None
            elif context is None:
                raise ValueError("context is None but the cache holds no prompt")
            else:
                cache.set_context(context)
        elif clean_x is not None:
            if clean_x.shape != x.shape:
                raise ValueError(f"clean_x {tuple(clean_x.shape)} must match x {tuple(x.shape)}")
            clean_tokens, _ = self.patchify(enter(clean_x))
            clean_t = self._frame_timesteps(0.0 if clean_t is None else clean_t, batch, frames).to(x.device)
            tokens = torch.cat([clean_tokens, tokens], dim=1)
            e0 = torch.cat([self.embed_time(clean_t)[1], e0], dim=1)
            rope = tuple(torch.cat([r, r]) for r in rope)  # both halves at the same positions
            mask = MaskSpec(grid[0], frame_tokens, num_frame_per_block, True, local_attn_size, sink_size,
                            independent_first_frame)
        elif causal:
            mask = MaskSpec(grid[0], frame_tokens, num_frame_per_block, False, local_attn_size, sink_size,
                            independent_first_frame)
        elif local_attn_size != -1:
            raise ValueError("local_attn_size needs causal=True (or a cache): a bidirectional window is not defined")

        ctx = None if context is None else self.embed_text(enter(context))
        # Activation checkpointing with a cache too: each layer gets its own `CacheCall`, whose recomputation in
        # backward reads what the forward read and writes nothing (see KVCache).
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        tokens = tokens if sp is None else sp.split(tokens)
        for layer, block in enumerate(self.blocks):
            call = None if cache is None else cache.call(layer)
            if recompute:
                tokens = checkpoint(block, tokens, e0, ctx, rope, mask, call, sp, use_reentrant=False)
            else:
                tokens = block(tokens, e0, ctx, rope, mask, call, sp)

        if clean_x is not None:  # the noisy half (of every frame's pieces, under sequence parallelism)
            tokens = tokens[:, tokens.shape[1] // 2:]
        out = self.head(tokens, e)
        out = self.unpatchify(out if sp is None else sp.gather(out), grid)
        if self.config.prediction == "x0":
            # sigma floored at X0_MIN_SIGMA (as JiT does): finite flow at t = 0 (cache refresh on clean frames),
            # and a flow loss weighs the x0 error by at most 1 / X0_MIN_SIGMA^2
            out = x0_to_flow(out, x, t, min_sigma=X0_MIN_SIGMA)
        return out
