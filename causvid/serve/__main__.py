"""Serve a causal student live: a web page where you type a prompt, watch its video stream, and change the
prompt while it plays (protocol: docs/serve.md).

    python -m causvid.serve            # the shipped toy student on http://127.0.0.1:7860, CPU is enough
    python -m causvid.serve --config_path configs/causal_forcing_dmd_chunkwise.yaml \\
        --checkpoint_path checkpoints/chunkwise/causal_forcing.pt --device cuda

Binds to loopback unless --host says otherwise (the server has no authentication).
"""
import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from causvid.config import denoising_steps, generator_is_causal
from causvid.pipelines.cli import FPS, build_generator, run as run_cli
from causvid.serve.app import ServeOptions, create_app
from causvid.serve.server import bind, run, url_of
from causvid.toy.marker import is_toy_folder

ROOT = Path(__file__).resolve().parents[2]
TOY_CONFIG, TOY_FOLDER = ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml", ROOT / "checkpoints" / "toy"
TOY_PROMPTS = ["a red square moving left", "a blue circle moving up", "a green triangle moving right",
               "a yellow square moving down", "a red circle moving right", "a blue triangle moving down",
               "a green square moving left", "a yellow circle moving up"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config_path", default=str(TOY_CONFIG), help="YAML config (default: the toy student's)")
    p.add_argument("--wan_model_path", help="Wan2.1 folder (default: checkpoints/toy with the default config, "
                                            "else the config's wan_model_path)")
    p.add_argument("--checkpoint_path", help="student weights (.pt or folder; default: the Wan folder's own)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860, help="0: any free port")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max_sessions", type=int, default=2, help="concurrent streams; more get an error")
    p.add_argument("--fps", type=float, help=f"frames/s sent per session (default: the video's, {FPS}; "
                                             "0: as fast as they are made)")
    return p


def build(args):
    """(app, model name) from parsed flags; ValueError / FileNotFoundError / ConfigError on bad input."""
    if args.max_sessions < 1:
        raise ValueError(f"--max_sessions {args.max_sessions}: must be at least 1")
    if args.fps is not None and args.fps < 0:
        raise ValueError(f"--fps {args.fps}: must be >= 0 (0: unpaced)")
    wan = args.wan_model_path
    if wan is None and Path(args.config_path).resolve() == TOY_CONFIG:
        wan = str(TOY_FOLDER)
    gen = build_generator(SimpleNamespace(config_path=args.config_path, wan_model_path=wan, device=args.device,
                                          dtype=None), args.checkpoint_path, causal=True)
    if not generator_is_causal(gen.config):
        raise ValueError(f"--config_path {args.config_path}: a bidirectional model cannot stream; give a causal one")
    if not denoising_steps(gen.config):
        print(f"note: {args.config_path} has no denoising_step_list: 50-step sampling, the stream will be slow",
              file=sys.stderr)
    folder = wan or gen.config.wan_model_path
    weights = Path(args.checkpoint_path or folder).resolve()
    name = f"{Path(args.config_path).stem} ({weights.relative_to(ROOT) if weights.is_relative_to(ROOT) else weights})"
    options = ServeOptions(model_name=name, fps=FPS if args.fps is None else args.fps, video_fps=FPS,
                           max_sessions=args.max_sessions,
                           suggestions=TOY_PROMPTS if is_toy_folder(folder) else [])
    return create_app(gen.components, gen.config, options), name


def main(argv=None, serve=run) -> int:
    args = parser().parse_args(argv)
    app, name = build(args)
    sock = bind(args.host, args.port)
    where = "loopback only" if args.host in ("127.0.0.1", "localhost", "::1") else "REACHABLE FROM OTHER MACHINES"
    print(f"serving {name} at {url_of(sock)} ({where}; Ctrl-C stops)", flush=True)
    serve(app, sock)
    print(f"stopped; served {app.state.sessions.served} session(s), wrote nothing", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
