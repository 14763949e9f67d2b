"""What the parts share (`Check`): the device and its peak, the benchmark's settings, the random DiT and VAE, the
rollout latents of the inference parts (for numerics), a work folder; and a random stand-in for umT5."""
from __future__ import annotations

import gc
import shutil
import tempfile
import zlib
from dataclasses import replace
from pathlib import Path

import torch

from causvid.models.prompt_encoder import CachedPromptEncoder
from causvid.models.wan.attention import set_attention_backend
from scripts import benchmark_inference as bench

PRESET_13B, PRESET_14B = "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"
SMOKE_PRESET, SMOKE_14B_PRESET = "tiny", "tiny-4layer"  # the smoke stand-ins of the two sizes

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from NVIDIA's data sheets; matched in the device name.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("L40", 181.0), ("A10G", 70.0), ("L4", 121.0), ("RTX 4090", 165.0))


def peak_tflops(device_name: str):
    """(TFLOP/s, source) of the device's dense bf16 peak, or (None, why not)."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value, f"data sheet, dense bf16, matched {key!r} in {device_name!r}"
    return None, f"no peak known for {device_name!r}: pass --peak_tflops"


class RandomPromptEncoder(CachedPromptEncoder):
    """Stands in for umT5-XXL (5.7B parameters, not loaded here): each prompt a fixed random embedding, one row
    per word plus one, keyed by the prompt's CRC32."""

    def __init__(self, text_len: int, dim: int):
        super().__init__(text_len)
        self.dim, self.device, self.dtype = dim, torch.device("cpu"), torch.float32

    def _key(self, prompt: str):
        return prompt

    def _embed(self, keys: list, prompts: list) -> list:
        out = []
        for prompt in prompts:
            gen = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            out.append(torch.randn(min(len(prompt.split()) + 1, self.text_len), self.dim, generator=gen))
        return out


class Check:
    """What the parts share: settings, inputs, the VAE, the latents of the inference parts (for numerics)."""

    def __init__(self, args):
        self.args, self.smoke = args, args.smoke
        if not self.smoke and not torch.cuda.is_available():
            raise SystemExit("device_check: no CUDA device here; run with --smoke for the CPU check")
        self.device = torch.device("cpu" if self.smoke else "cuda")
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.peak, self.peak_source = ((args.peak_tflops, "--peak_tflops") if args.peak_tflops
                                       else peak_tflops(self.device_name) if self.device.type == "cuda"
                                       else (None, "CPU: no peak"))
        repeats = args.repeats or (1 if self.smoke else 2)
        flags = ["--config", bench.DEFAULT_TINY_CONFIG if self.smoke else bench.DEFAULT_CONFIG,
                 "--preset", SMOKE_PRESET if self.smoke else PRESET_13B, "--device", self.device.type,
                 "--dtype", "bfloat16", "--vae", "tiny" if self.smoke else "real",
                 "--repeats", str(repeats), "--warmup", str(args.warmup)]
        self.settings = bench.resolve_settings(bench.parse_args(flags + (
            ["--peak_tflops", str(self.peak)] if self.peak else [])))
        self.dtype = getattr(torch, self.settings.dtype)
        self.compile_backend = args.compile_backend or ("aot_eager" if self.smoke else "inductor")
        self.train_steps = args.train_steps or (1 if self.smoke else 2)
        self.latents = {}  # part name -> the rollout's clean latents (float32, CPU)
        self.results = None  # the JSON being written (set by run_parts)
        self._vae, self.vae_error = None, None
        self.compiled = False  # a part compiled something: drop dynamo's caches after it
        self._workdir = None
        self._training_data = None

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def vae(self):
        """The decoder of the with-VAE figures; None (and the reason in vae_error) if it cannot be built, so the
        inference parts still give their other figures."""
        if self._vae is None and self.vae_error is None:
            try:
                self._vae = bench.build_vae(self.settings.vae, self.settings.device, self.dtype)
            except Exception as err:
                self.vae_error = f"{type(err).__name__}: {err}"
        return self._vae

    def model(self, **changes):
        """A fresh random DiT (the same weights for the same settings), eager, attention 'sdpa'."""
        set_attention_backend("sdpa")
        return bench.build_dit(replace(self.settings, **changes))

    def workdir(self) -> Path:
        if self._workdir is None:
            if self.args.workdir:
                self._workdir = Path(self.args.workdir)
                self._workdir.mkdir(parents=True, exist_ok=True)
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix="device_check_"))
        return self._workdir

    def cleanup(self) -> None:
        gc.unfreeze()
        if self._workdir is not None and not self.args.workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def free(self) -> None:
        """Between parts: drop compiled graphs and CUDA graph pools (they hold their models) and cached device
        memory. (FlexAttention's compiled kernel is kept unless a part compiled blocks.) What survives the
        collection (the imports, the VAE, the kept latents) is frozen, so the next one scans only what later
        parts made (a full collection over torch's, transformers' and diffusers' objects took 0.4-0.7 s each
        time); cleanup() unfreezes it."""
        if self.compiled:
            torch._dynamo.reset()
            self.compiled = False
        gc.collect()
        gc.freeze()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        set_attention_backend("auto")

    def ok_result(self, name: str):
        part = (self.results or {}).get("parts", {}).get(name, {})
        return part.get("result") if part.get("status") == "ok" else None
