"""Bytes a training step holds for backward, counted rather than guessed.

What a forward keeps alive until its backward is (1) the tensors autograd saves, (2) the inputs activation
checkpointing keeps to recompute a layer (its saved tensors are recomputed, so they are not held), and (3)
anything that carries graph across calls (the KV cache's stores in a Self-Forcing rollout, which checkpointed
layers read). `HeldForBackward` counts all three, each storage once (views of one tensor, the cache's store read
by every layer call, count once), and leaves out the models' own parameters and buffers (held anyway).

A tiny model's peak RSS says nothing about a real one; these counts at the real widths with 1-2 layers and two
token counts fit `a + b T + L (c + d T)` exactly, and extrapolate to any depth and length (`LinearFit`).
"""
import contextlib
from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks

import causvid.models.wan.dit as dit_module
from causvid.models.wan.kv_cache import CacheCall


def _tensors(obj):
    """Tensors inside args: tensors, tuples / lists / dicts of them, and a `CacheCall`'s reads."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
    elif isinstance(obj, CacheCall):
        yield from _tensors((obj.past, obj.cross))


def _unpack(t):
    return t


class HeldForBackward(contextlib.ContextDecorator):
    """Within the context, record every storage a forward holds for backward; `.bytes` is their total.

        with HeldForBackward(generator, critic) as held:
            loss = stage.generator_loss(models, batch, step)
        print(held.bytes)
    """

    def __init__(self, *modules: torch.nn.Module):
        self.exclude = {t.untyped_storage().data_ptr() for m in modules
                        for t in list(m.parameters()) + list(m.buffers())}
        # data_ptr -> nbytes. No reference to the tensors is kept: autograd and checkpointing hold them until the
        # backward (so no address is reused meanwhile), and a reference from here would tie them to the graph
        # that holds this object's hooks, in a cycle Python's collector cannot see.
        self.storages = {}

    def _record(self, t: torch.Tensor):
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in self.exclude and ptr not in self.storages:
            self.storages[ptr] = storage.nbytes()

    def _pack(self, t):
        self._record(t)
        return t

    def _checkpoint(self, fn, *args, **kwargs):
        out = self._real_checkpoint(fn, *args, **kwargs)
        for t in _tensors((args, kwargs)):  # after the call: a CacheCall's reads exist once it has run
            self._record(t)
        return out

    def __enter__(self):
        self._real_checkpoint = dit_module.checkpoint
        dit_module.checkpoint = self._checkpoint
        self._hooks = saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        dit_module.checkpoint = self._real_checkpoint
        return False

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


@dataclass(frozen=True)
class LinearFit:
    """bytes(L layers, T tokens) = a + b T + L (c + d T), from four measurements at L in {l1, l2}, T in {t1, t2}."""
    a: float
    b: float
    c: float
    d: float

    @classmethod
    def from_grid(cls, layers: tuple, tokens: tuple, measured: dict) -> "LinearFit":
        """measured[(L, T)] for L in `layers` (two depths), T in `tokens` (two lengths)."""
        (l1, l2), (t1, t2) = layers, tokens
        per_layer = {t: (measured[(l2, t)] - measured[(l1, t)]) / (l2 - l1) for t in tokens}
        rest = {t: measured[(l1, t)] - l1 * per_layer[t] for t in tokens}
        d = (per_layer[t2] - per_layer[t1]) / (t2 - t1)
        b = (rest[t2] - rest[t1]) / (t2 - t1)
        return cls(a=rest[t1] - b * t1, b=b, c=per_layer[t1] - d * t1, d=d)

    def __call__(self, layers: int, tokens: int) -> float:
        return self.a + self.b * tokens + layers * (self.c + self.d * tokens)

    @property
    def per_token_per_layer(self) -> float:
        return self.d


# -- one training stage, measured ------------------------------------------------------------------------------------

def stage_models(stage, preset: str, layers: int, dtype=torch.float32, real_preset: str = None, seed: int = 0):
    """Random models of `preset`'s widths with `layers` blocks, in the roles `stage` needs (the real score may be
    of another size, as Self-Forcing's 14B real score for a 1.3B student)."""
    from causvid.models.wan.dit import WanDiT
    from causvid.training.stages import Models

    torch.manual_seed(seed)

    def make(name=preset, train=False):
        model = WanDiT.from_preset(name, num_layers=layers).to(dtype)
        model.gradient_checkpointing = bool(stage.cfg.gradient_checkpointing)
        with torch.no_grad():  # Wan's init zeroes the head; any non-zero weights do for counting bytes
            model.head.head.weight.normal_(std=0.02)
        return model.train(train).requires_grad_(train)

    models = Models(make(train=True))
    if stage.has_critic:
        models.fake_score, models.real_score = make(train=True), make(real_preset or preset)
    if stage.needs_teacher:
        models.teacher, models.target = make(), make()
    return models


def stage_batch(stage, models, latent_shape, batch_size: int = 1, seed: int = 0) -> dict:
    """A batch of random inputs for `stage` (data latents, ODE rows or prompts' embeddings) of latent_shape
    [F, C, H, W]."""
    g = torch.Generator().manual_seed(seed)
    cfg, dtype = models.generator.config, models.generator.dtype
    randn = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    batch = {"samples": list(range(batch_size)), "context": randn(batch_size, cfg.text_len, cfg.text_dim),
             "negative": randn(batch_size, cfg.text_len, cfg.text_dim)}
    if stage.data == "latents":
        batch["clean"] = randn(batch_size, *latent_shape)
    elif stage.data == "ode":
        slots = len(stage.times) + (2 if stage.layout == "causal_forcing" else 0)
        batch["ode"] = randn(batch_size, slots, *latent_shape)
    return batch


def held_bytes(stage, models, batch, role: str = "generator", step: int = 0) -> int:
    """Bytes one generator (or critic) loss of `stage` holds for backward; the backward then runs (the graph of
    a checkpointed cached rollout is a cycle through autograd that only the backward's release of saved
    tensors breaks)."""
    modules = [m for m in (models.generator, models.fake_score, models.real_score, models.teacher, models.target)
               if m is not None]
    with HeldForBackward(*modules) as held:
        loss = (stage.critic_loss if role == "critic" else stage.generator_loss)(models, batch, step)
    loss.backward()
    return held.bytes
