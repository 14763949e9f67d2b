import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The toy student ships in the package (`python -m causvid.serve` works from an installed copy): the build copies
# these folders of the checkout to causvid/serve/shipped/, where causvid.serve.assets finds them.
SHIPPED = ["configs/toy", "checkpoints/toy_long"]


class BuildWithToy(build_py):
    def run(self):
        super().run()
        for folder in SHIPPED:
            target = Path(self.build_lib) / "causvid" / "serve" / "shipped" / folder
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(__file__).resolve().parent / folder, target)


setup(
    name="causvid",
    version="0.1.0",
    description="Autoregressive (block-causal, KV-cached) video diffusion on Wan2.1: CausVid, Self-Forcing, Causal Forcing",
    packages=find_packages(include=["causvid", "causvid.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.5",
        "diffusers>=0.35",  # per-token timesteps in WanTransformer3DModel (the test reference), AutoencoderKLWan
        "transformers>=4.50",
        "safetensors>=0.4",
        "omegaconf>=2.3",
        "lmdb>=1.4",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.4",
        "tqdm>=4.60",
        "tokenizers>=0.15",
        "sentencepiece>=0.1.99",
        "ftfy>=6.0",
        "pillow>=9.0",
        # the live server (python -m causvid.serve) and its WebSocket client in tests and benchmarks
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "websockets>=13.0",
        # LoRA training (causvid/training/lora.py); diffusers' load_lora_weights needs it too
        "peft>=0.17",
    ],
    package_data={"causvid.serve": ["static/*.html"]},
    cmdclass={"build_py": BuildWithToy},
    entry_points={"console_scripts": ["causvid-serve = causvid.serve.__main__:cli",
                                      "causvid-export = causvid.export:cli"]},
    extras_require={
        # flash-attn needs a CUDA toolchain to build; the model falls back to PyTorch attention without it.
        "flash": ["flash-attn>=2.5"],
        "wandb": ["wandb"],
        "test": ["pytest>=7.0", "pytest-xdist>=3.8", "playwright>=1.40"],
    },
)
