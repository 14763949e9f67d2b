"""Prompts in, decoded frames out: the components of a Wan text-to-video model and the streaming generator
the inference CLIs drive.

`load_components` reads the Wan folder (text encoder, VAE, and the DiT unless a checkpoint replaces it) the
same way for the real 1.3B / 14B releases and for the tiny folders of `scripts/make_tiny_wan.py`.
`load_dit` / `load_text_encoder` / `load_vae` are the one loading hook for each component (every CLI and the
trainer go through them): the folder's `model_index.json` names the class that builds it
(`causvid.models.model_index`; a toy-world folder names the toy encoder and latent space, which share the Wan
classes' interfaces); a folder without one is a Wan folder (umT5, the Wan VAE, `WanDiT`).
`VideoGenerator.stream` yields pixel frames block by block as the causal rollout finishes each block, so the
first frames can be written (or shown) before the video is complete.
"""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from causvid import rng
from causvid.errors import UsageError
from causvid.models.lora import merge_lora_tensors, training_adapter
from causvid.runtime import check_wan_folder  # noqa: F401  (torch-free, so the CLIs check it first)
from causvid.models.model_index import component_class
from causvid.models.wan import WanDiT
from causvid.models.wan.checkpoints import config_from_json, read_folder_config
from causvid.pipelines.rollout import bidirectional_sample
from causvid.pipelines.stream import StreamBlock, StreamSession, make_sampler

if TYPE_CHECKING:
    from causvid.models.text_encoder import WanTextEncoder
    from causvid.models.vae import WanVAE


@dataclass
class Components:
    dit: WanDiT
    # the classes the folder's model_index.json names (causvid.models.model_index): umT5 (`WanTextEncoder`) and
    # the Wan VAE (`WanVAE`) for a Wan folder, imported only when a folder needs them (transformers and diffusers
    # take seconds to import, the toy world's own classes none)
    text_encoder: "WanTextEncoder"
    vae: "WanVAE"


def _dit_source(wan_folder, checkpoint):
    """(class, weights path, size keywords): the Wan folder's own DiT, or a checkpoint (published .pt, Wan or
    diffusers folder) whose sizes the tensors give and whose head count, text length and prediction come from
    the Wan folder's config.json."""
    dit_class = component_class(wan_folder, "transformer")
    if checkpoint is None:
        return dit_class, wan_folder, {}
    sizes = config_from_json(read_folder_config(wan_folder), wan_folder)
    return dit_class, checkpoint, {k: v for k, v in sizes.items() if k in ("num_heads", "text_len", "prediction")}


def _lora_student(wan_folder, checkpoint, use_ema, device):
    """A LoRA run's checkpoint: the base it names with the adapter merged into it (fp32); None for any other."""
    adapter = training_adapter(checkpoint, use_ema) if checkpoint is not None else None
    if adapter is None:
        return None
    tensors, record = adapter
    base = record.get("base_checkpoint")
    if base is not None and not Path(base).exists():
        raise UsageError(f"{checkpoint}: a LoRA trained on generator_ckpt {base}, which is not there; put it "
                         "back at that path (the adapter alone is not the student)")
    model = load_dit(wan_folder, base, dtype=torch.float32, device=device)
    merge_lora_tensors(model, tensors, checkpoint)
    return model


def load_dit(wan_folder, checkpoint=None, use_ema=False, dtype=None, device=None) -> WanDiT:
    """The DiT of a Wan folder, or of a checkpoint sized by that folder (see `_dit_source`), or a LoRA run's
    student (its base with the adapter merged)."""
    student = _lora_student(wan_folder, checkpoint, use_ema, device)
    if student is not None:
        return student.to(dtype or torch.float32)
    dit_class, path, sizes = _dit_source(wan_folder, checkpoint)
    return dit_class.from_pretrained(path, use_ema=use_ema, dtype=dtype, device=device, **sizes)


def open_dit(wan_folder, checkpoint=None, use_ema=False, dtype=None) -> tuple:
    """As `load_dit`, but (the model on the meta device, its tensors unread): for a sharded load that reads
    each rank's rows only (`causvid.training.distributed.materialize`). A LoRA run's student is merged whole
    first (its base and adapter are two files)."""
    student = _lora_student(wan_folder, checkpoint, use_ema, "cpu")
    if student is not None:
        with torch.device("meta"):
            model = type(student)(student.config).to(dtype or torch.float32)
        return model, dict(student.state_dict())
    dit_class, path, sizes = _dit_source(wan_folder, checkpoint)
    return dit_class.open_pretrained(path, use_ema=use_ema, dtype=dtype, **sizes)


def load_text_encoder(folder, text_len, dtype=torch.float32, device="cpu"):
    """The folder's text encoder: the class its model_index.json names, umT5 (`WanTextEncoder`) without one."""
    cls = component_class(folder, "text_encoder")
    return cls.from_pretrained(folder, dtype=dtype, device=device, text_len=text_len)


def load_vae(folder, dtype=torch.float32, device="cpu"):
    """The folder's VAE: the class its model_index.json names, the Wan VAE (`WanVAE`) without one."""
    return component_class(folder, "vae").from_pretrained(folder, dtype=dtype, device=device)


def load_components(wan_model_path, checkpoint=None, use_ema=False, dtype=torch.float32, device="cpu") -> Components:
    wan = check_wan_folder(wan_model_path)
    dit = load_dit(wan, checkpoint, use_ema, dtype, device).eval().requires_grad_(False)
    text_encoder = load_text_encoder(wan, dit.config.text_len, dtype=dtype, device=device)
    vae = load_vae(wan, dtype=dtype, device=device)
    return Components(dit, text_encoder, vae)


@dataclass
class Timing:
    """Seconds from the start of a video to its first block (latents, then pixels) and to the end."""
    first_block_latent: float = None
    first_block_pixels: float = None
    total_latent: float = 0.0  # time spent in the DiT rollout
    total: float = 0.0
    pixel_frames: int = 0

    def fps(self, with_vae: bool) -> float:
        seconds = self.total if with_vae else self.total_latent
        return self.pixel_frames / seconds if seconds > 0 else float("nan")

    def summary(self) -> str:
        return (f"first block {self.first_block_latent:.3f} s (latents) / {self.first_block_pixels:.3f} s (pixels); "
                f"{self.fps(False):.2f} FPS without VAE, {self.fps(True):.2f} FPS with VAE decode")


@dataclass
class VideoGenerator:
    """Generation settings from a config (the seeds' keys) bound to loaded components."""
    components: Components
    config: object
    causal: bool = True
    device: str = "cpu"
    timing: Timing = field(default_factory=Timing)

    @property
    def latent_shape(self):
        return tuple(self.config.image_or_video_shape[1:])  # [F, C, h, w]

    def sampler(self, generator):
        return make_sampler(self.config, generator)

    def noise(self, num_frames, seed, index, rollout=0):
        """Per-video noise from (seed, prompt index, rollout): the same video whatever the rank count or order
        (never one noise tensor shared by every prompt, as CausVid's script does)."""
        gen = rng.generator(seed, index, rollout)  # the keyed randomness of causvid.rng, as in training
        _, c, h, w = self.latent_shape
        return torch.randn(1, num_frames, c, h, w, generator=gen).to(self.device, self.components.dit.dtype), gen

    def stream(self, prompt, num_frames: int = None, seed: int = 0, index: int = 0, rollout: int = 0,
               initial_latent=None, local_attn_size: int = None, sink_size: int = None, input_latents=None,
               strength: float = None):
        """Yield (latent block, its new pixel frames [1, n, 3, H, W] in [-1, 1]) as each block is finished: a
        finite `StreamSession` for a causal model, the whole video at once for a bidirectional one.

        prompt: a string, or a schedule [(prompt, start latent frame), ...] switching (with re-cache) at those
        frames. input_latents + strength: video-to-video; the video is then the input's length, in whole blocks.
        """
        cfg, comp = self.config, self.components
        schedule = [(prompt, 0)] if isinstance(prompt, str) else list(prompt)
        if input_latents is not None:
            num_frames = input_latents.shape[1] // cfg.num_frame_per_block * cfg.num_frame_per_block
        num_frames = num_frames or self.latent_shape[0]
        start_time = time.perf_counter()
        self.timing = Timing()
        noise, gen = self.noise(num_frames, seed, index, rollout)
        if self.causal:
            session = StreamSession(comp, cfg, schedule[0][0], noise=noise, generator=gen,
                                    initial_latent=initial_latent, local_attn_size=local_attn_size,
                                    sink_size=sink_size, input_latents=input_latents, strength=strength)
            blocks = _scheduled(session, dict((start, p) for p, start in schedule[1:]))
        elif len(schedule) > 1 or input_latents is not None:
            raise ValueError("prompt schedules and video-to-video need a causal (autoregressive) model")
        else:
            blocks = self._bidirectional(schedule[0][0], noise, gen)
        vae_seconds = 0.0
        for block in blocks:
            done = time.perf_counter()
            vae_seconds += block.decode_seconds
            if self.timing.first_block_latent is None:
                self.timing.first_block_latent = done - block.decode_seconds - start_time
                self.timing.first_block_pixels = done - start_time
            self.timing.pixel_frames += block.pixels.shape[1]
            yield block.latents, block.pixels
            start_time += time.perf_counter() - done  # time spent by the consumer is not ours
        self.timing.total = time.perf_counter() - start_time
        self.timing.total_latent = self.timing.total - vae_seconds

    def _bidirectional(self, prompt, noise, gen):
        comp = self.components
        sampler, guidance = self.sampler(gen)
        context = comp.text_encoder.encode([prompt]).to(noise.dtype)
        negative = comp.text_encoder.encode([self.config.negative_prompt]).to(noise.dtype) if guidance != 1.0 else None
        started = time.perf_counter()
        with torch.no_grad():
            latents = bidirectional_sample(comp.dit, noise, context, sampler=sampler, negative_context=negative,
                                           guidance_scale=guidance)
            sampled = time.perf_counter()
            pixels = comp.vae.stream_decoder().decode(latents)
        yield StreamBlock(0, latents, pixels, prompt, sampled - started, time.perf_counter() - sampled)


def _scheduled(session, switches: dict):
    """The session's blocks, switching the prompt (with re-cache) where `switches` says {start frame: prompt}."""
    while not session.finished:
        if session.frame in switches:
            session.set_prompt(switches[session.frame])
        yield session.next_block()
