"""Inference speed switches, kept out of the model: each one is opt-in and leaves the outputs as they are.

* `compile_blocks(model)`: `torch.compile` of every transformer block (regional compilation: the blocks share
  one compiled graph, since their code is the same). The KV cache's bookkeeping (list indexing by layer, slot
  writes) stays outside the graphs, so a 30-layer model compiles a handful of graphs instead of one per layer.
  `mode="reduce-overhead"` adds CUDA graphs on a GPU (`cuda_graphs=True` in `SpeedOptions`).
* `set_cross_cache_reuse(model, False)`: turn off the reuse of the prompt's cross-attention K/V (and its text
  MLP) across blocks and denoising steps, which a KV cache does by default. For measuring what the reuse saves.
* `overlapped_decode(blocks, decoder)`: decode block b's latents into pixels while block b+1 is generated (the
  rollout runs on a worker thread and, on CUDA, its own stream); blocks come out in the same order with the same
  pixels as decoding one after the other.
* `sdpa_kernel(name)`: pin PyTorch's SDPA kernel (flash / efficient / cudnn / math) for a region.
* `SpeedOptions` + `apply_speed_options(model, options)`: all of the above from flags (plus the attention backend
  of `causvid.models.wan.attention`), as `scripts/benchmark_inference.py` uses them.

Nothing here edits `WanDiT` or `KVCache` source: `compile_blocks` and `set_cross_cache_reuse` replace the
model's `new_cache` method (on the instance only) by one that returns a `SpeedKVCache`, and `compile_blocks`
marks each block's cross-attention call as not-to-be-traced.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch._dynamo

from causvid.models.wan.attention import set_attention_backend
from causvid.models.wan.kv_cache import KVCache

__all__ = ["SpeedKVCache", "SpeedOptions", "apply_speed_options", "compile_blocks", "set_cross_cache_reuse",
           "overlapped_decode", "sdpa_kernel"]


# ----------------------------------------------------------------------------------------------------------------
# KV cache variant


@torch.compiler.disable
def _eager_update(cache: KVCache, layer: int, k: torch.Tensor, v: torch.Tensor):
    return KVCache.update(cache, layer, k, v)


class SpeedKVCache(KVCache):
    """`KVCache` with two switches.

    reuse_cross: False = never report the prompt as cached, so every call recomputes the text MLP and the
                 cross-attention K/V (the cost that reusing them removes).
    eager_update: True = `update` runs outside torch.compile graphs (a graph break), so compiled blocks do not
                 specialise on the layer index or on the cache's fill level.
    """

    reuse_cross: bool = True
    eager_update: bool = False

    def holds_context(self, context: torch.Tensor) -> bool:
        return super().holds_context(context) if self.reuse_cross else False

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple:
        if self.eager_update:
            return _eager_update(self, layer, k, v)
        return super().update(layer, k, v)


def _cache_options(model) -> dict:
    return dict(getattr(model, "_speed_cache_options", {"reuse_cross": True, "eager_update": False}))


def _install_cache_options(model, **options) -> None:
    """Make `model.new_cache` return `SpeedKVCache`s with these options (merged with earlier ones)."""
    opts = {**_cache_options(model), **options}
    model._speed_cache_options = opts
    num_layers = len(model.blocks)

    def new_cache(batch_size: int, max_frames: int = None, local_attn_size: int = -1, sink_size: int = 0,
                  gradient: str = "straight_through", rope_positions: str = "absolute"):
        cache = SpeedKVCache(num_layers, batch_size, max_frames, local_attn_size, sink_size, gradient,
                             rope_positions)
        cache.reuse_cross, cache.eager_update = opts["reuse_cross"], opts["eager_update"]
        return cache

    new_cache.__doc__ = type(model).new_cache.__doc__
    model.new_cache = new_cache  # instance attribute: shadows the method for this model only


def set_cross_cache_reuse(model, enabled: bool = True):
    """Reuse (default) or recompute, on every call, the prompt's cross-attention K/V and text MLP in caches made
    by `model.new_cache` from now on. Outputs are the same either way. Returns the model."""
    _install_cache_options(model, reuse_cross=bool(enabled))
    return model


# ----------------------------------------------------------------------------------------------------------------
# torch.compile of the blocks


def compile_blocks(model, backend="inductor", mode: Optional[str] = None, dynamic: Optional[bool] = None,
                   fullgraph: bool = False, recompile_limit: int = 64):
    """Compile each transformer block of `model` in place (`nn.Module.compile`) and return the model.

    Works for `WanDiT` (with or without a KV cache) and for any model with a `.blocks` ModuleList (diffusers'
    Wan / SkyReels-V2 transformers). For a `WanDiT`, the cache writes and the cross-attention call (which looks the
    prompt's K/V up by layer index) run eagerly between the compiled pieces; the rest of the block (modulation,
    norms, q/k/v projections with RMSNorm and RoPE, attention, FFN) is compiled. The key length of a growing
    cache becomes a dynamic shape after its second value, so a cached rollout compiles a handful of graphs
    whatever its length; a no-cache rollout recompiles for each prefix length (dynamo specialises on the mask).

    mode: torch.compile mode; "reduce-overhead" records CUDA graphs on a GPU (untested here; cudagraph trees
    re-record for each new key length until a rolling window is full, and skip graphs that mutate inputs).
    backend: a torch.compile backend name or callable. recompile_limit: dynamo's per-code-object recompile budget
    is raised to at least this (a process-wide setting).
    """
    if not hasattr(model, "blocks"):
        raise TypeError(f"{type(model).__name__} has no .blocks to compile")
    # The blocks share one code object, so their graphs share dynamo's recompile budget (default 8): a no-cache
    # rollout specialises on each prefix length (through the attention mask), and the first calls of a cached one
    # on the layer index and on the prompt being cached or not. Past the budget dynamo silently runs eagerly.
    dynamo_config = torch._dynamo.config
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), recompile_limit))
    is_wan = hasattr(model, "new_cache")
    for block in model.blocks:
        if is_wan and hasattr(block, "cross_attn") and not getattr(block, "_speed_compiled", False):
            block.cross_attn.cross_attention = torch.compiler.disable(block.cross_attn.cross_attention)
        block.compile(backend=backend, mode=mode, dynamic=dynamic, fullgraph=fullgraph)
        block._speed_compiled = True
    if is_wan:
        _install_cache_options(model, eager_update=True)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Overlapped decode


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _decode_fn(decoder) -> Callable:
    return decoder.decode if hasattr(decoder, "decode") else decoder


def overlapped_decode(blocks: Iterable, decoder, enabled: bool = True, max_ahead: int = 1) -> Iterator[tuple]:
    """Decode a stream of latent blocks, overlapping the decode of block b with the generation of block b+1.

    blocks:  an iterable of (start_frame, latents), e.g. `causal_rollout(...)`.
    decoder: a `StreamingDecoder` (or any object with `.decode(latents)`, or a callable).
    Yields (start_frame, latents, pixels) in block order, exactly as the sequential loop
    `for s, z in blocks: yield s, z, decoder.decode(z)` does (`enabled=False` runs that loop).

    The rollout runs on a worker thread, at most `max_ahead` blocks ahead of the decoder; the decoder runs on the
    caller's thread, so the first block's pixels come as early as in the sequential loop. The worker inherits the
    caller's grad and inference mode. On CUDA the worker generates on its own stream and the decoder runs on a
    side stream that waits for each block's event, so the two overlap on the device; the pixels are ready on the
    caller's current stream when yielded. On CPU the overlap is between two threads sharing the cores.
    """
    decode = _decode_fn(decoder)
    if not enabled:
        for start, latents in blocks:
            yield start, latents, decode(latents)
        return

    grad_enabled, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    out: queue.Queue = queue.Queue(maxsize=max(1, int(max_ahead)))
    stop = threading.Event()
    use_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    gen_stream = torch.cuda.Stream() if use_cuda else None
    if gen_stream is not None:
        gen_stream.wait_stream(torch.cuda.current_stream())  # inputs made on the caller's stream

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            # (inference_mode(False) would switch grad on: enter it only when the caller is in it)
            with (torch.inference_mode() if inference else contextlib.nullcontext()), \
                    torch.set_grad_enabled(grad_enabled), \
                    (torch.cuda.stream(gen_stream) if gen_stream is not None else contextlib.nullcontext()):
                iterator = iter(blocks)
                while not stop.is_set():
                    try:
                        start, latents = next(iterator)
                    except StopIteration:
                        break
                    event = None
                    if latents.is_cuda:
                        event = torch.cuda.Event()
                        event.record()
                    if not put((start, latents, event)):
                        return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, re-raised there
            put(_Failure(error))

    worker = threading.Thread(target=produce, name="overlapped-rollout", daemon=True)
    worker.start()
    decode_stream = None
    try:
        while True:
            item = out.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.error
            start, latents, event = item
            if event is not None:
                if decode_stream is None:
                    decode_stream = torch.cuda.Stream(device=latents.device)
                decode_stream.wait_event(event)
                with torch.cuda.stream(decode_stream):
                    pixels = decode(latents)
                latents.record_stream(decode_stream)
                torch.cuda.current_stream(latents.device).wait_stream(decode_stream)
            else:
                pixels = decode(latents)
            yield start, latents, pixels
    finally:
        stop.set()
        worker.join()


# ----------------------------------------------------------------------------------------------------------------
# Attention kernels


SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


def sdpa_kernel(name: Optional[str]):
    """A context manager restricting torch's scaled_dot_product_attention to one kernel (None / "auto": any)."""
    if name in (None, "auto"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as _sdpa_kernel

    table = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if name not in table:
        raise ValueError(f"unknown SDPA kernel {name!r}; choose one of {SDPA_KERNELS} or 'auto'")
    return _sdpa_kernel([table[name]])


# ----------------------------------------------------------------------------------------------------------------
# All switches from flags


@dataclass
class SpeedOptions:
    compile: bool = False               # torch.compile of each block
    compile_backend: str = "inductor"   # "inductor" | "aot_eager" | "eager" | ...
    compile_mode: Optional[str] = None  # torch.compile mode
    cuda_graphs: bool = False           # compile mode "reduce-overhead" (implies compile)
    cross_cache: bool = True            # reuse the prompt's cross-attention K/V across calls
    overlap_decode: bool = False        # decode block b while block b+1 is generated
    attention_backend: str = "auto"     # causvid.models.wan.attention backend: auto | sdpa | flex | flash
    sdpa_kernel: Optional[str] = None   # pin SDPA's kernel: flash | efficient | cudnn | math

    def describe(self) -> str:
        on = [name for name, flag in (("compile", self.compile or self.cuda_graphs), ("cuda-graphs", self.cuda_graphs),
                                      ("overlap-decode", self.overlap_decode)) if flag]
        if not self.cross_cache:
            on.append("no-cross-cache")
        on.append(f"attention={self.attention_backend}")
        if self.sdpa_kernel:
            on.append(f"sdpa={self.sdpa_kernel}")
        if self.compile or self.cuda_graphs:
            on.append(f"compile-backend={self.compile_backend}")
        return ", ".join(on)


def apply_speed_options(model, options: SpeedOptions):
    """Apply the model-side switches (compile, cross-cache reuse) and the global attention backend; return the
    model. Overlapped decode and the SDPA kernel are applied by the caller around its loop (`overlapped_decode`,
    `sdpa_kernel`)."""
    set_attention_backend(options.attention_backend)
    if hasattr(model, "new_cache"):
        set_cross_cache_reuse(model, options.cross_cache)
    if options.compile or options.cuda_graphs:
        mode = "reduce-overhead" if options.cuda_graphs else options.compile_mode
        compile_blocks(model, backend=options.compile_backend, mode=mode)
    return model
