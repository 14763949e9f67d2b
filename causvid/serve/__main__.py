"""Serve a causal student live: a web page where you type a prompt, watch its video stream, and change the
prompt while it plays (the protocol: docs/serve.md). With no flag it serves the shipped toy student (32x32,
16 frames/s) on http://127.0.0.1:7860; a CPU is enough.

examples:
  python -m causvid.serve
  python -m causvid.serve --config_path configs/causal_forcing_dmd_chunkwise.yaml \\
      --checkpoint_path checkpoints/chunkwise/causal_forcing.pt --device cuda

It binds to loopback unless --host says otherwise, and accepts the stream only from its own page unless
--allow_origin says otherwise: the server has no authentication.
"""
import argparse
import logging
import sys
from pathlib import Path
from urllib.parse import urlsplit

# Only light imports here: --help, a bad flag and a busy port are answered before torch and the model load.
from causvid.errors import ArgumentParser, UsageError, non_negative_int, positive_int, run_cli
from causvid.serve.assets import CHECKOUT, toy_config, toy_folder
from causvid.serve.server import bind, url_of

PROG = "python -m causvid.serve"
TOY_PROMPTS = ["a red square moving left", "a blue circle moving up", "a green triangle moving right",
               "a yellow square moving down", "a red circle moving right", "a blue triangle moving down",
               "a green square moving left", "a yellow circle moving up"]
MIN_MESSAGE_BYTES = 256  # a start message with a short prompt must fit


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_path", default=str(toy_config()),
                   help="YAML config of a causal model (default: the toy student's, %(default)s)")
    p.add_argument("--wan_model_path", help="Wan2.1 folder: DiT, text encoder, VAE (default: the toy folder with "
                                            "the default config, else the config's wan_model_path)")
    p.add_argument("--checkpoint_path", help="student weights, .pt or folder (default: the Wan folder's own DiT)")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="merge this LoRA (ours, diffusers' or ComfyUI's Wan2.1 key format) into the DiT's weights "
                        "once, times SCALE (default 1); repeatable, merged in order")
    p.add_argument("--local_attn_size", type=positive_int,
                   help="each stream's rolling KV window in latent frames (default: the config's "
                        "model_kwargs.local_attn_size, else the training length)")
    p.add_argument("--sink_size", type=non_negative_int,
                   help="first latent frames the window always keeps (default: 0 for the shipped toy student, which "
                        "then holds its prompt in every window; else the config's window's, else one block)")
    p.add_argument("--rope_positions", choices=["absolute", "window"],
                   help="RoPE positions of cached frames: absolute frame indices or ranks in the window "
                        "(default: the config's model_kwargs.rope_positions); README, \"Long videos\"")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s; 0: any free one)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where the model runs (default: cuda when available, "
                                                             "else cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of torch for the process (default: %(default)s, fastest for the toy on a CPU: "
                        "each session generates in its own thread)")
    p.add_argument("--max_sessions", type=int, default=2,
                   help="streams at a time; one more gets an error event (default: %(default)s)")
    p.add_argument("--fps", type=float, help="frames/s sent per session (default: the video's, 16; 0: as fast as "
                                             "they are made)")
    p.add_argument("--allow_origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept the stream from pages of this origin (e.g. http://localhost:3000; repeatable; "
                        "'*': from any page; default: only the server's own page and clients without an Origin)")
    p.add_argument("--max_message_bytes", type=int, default=4096,
                   help="largest client message read; a larger one gets an error event (default: %(default)s)")
    return p


def check(args) -> None:
    """Every check that needs no model, so bad flags are answered at once; UsageError names the flag."""
    if args.max_sessions < 1:
        raise UsageError(f"--max_sessions {args.max_sessions}: must be at least 1")
    if args.fps is not None and args.fps < 0:
        raise UsageError(f"--fps {args.fps}: must be >= 0 (0: unpaced)")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be at least 1")
    if args.max_message_bytes < MIN_MESSAGE_BYTES:
        raise UsageError(f"--max_message_bytes {args.max_message_bytes}: must be at least {MIN_MESSAGE_BYTES}")
    args.allow_origin = [check_origin(origin) for origin in args.allow_origin]
    for flag in ("config_path", "wan_model_path", "checkpoint_path"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            raise UsageError(f"--{flag} {path}: no such file or folder")
    if args.sink_size is None and Path(args.config_path).resolve() == toy_config():
        args.sink_size = 0  # the shipped toy student: no sink holds every window to 8x (README, "Live server")
    if args.local_attn_size is not None or args.sink_size is not None:  # the window against the config's blocks
        from causvid.config import load_config

        kv_window(load_config(args.config_path), args)


def check_origin(origin: str) -> str:
    """'*' or scheme://host[:port] (lower-cased, as browsers send it), else UsageError."""
    if origin == "*":
        return origin
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise UsageError(f"--allow_origin {origin}: give scheme://host[:port] as a browser sends it "
                         "(e.g. http://localhost:3000), or '*' for any page")
    return f"{parts.scheme}://{parts.netloc}"


def build(args):
    """(app, model name) from checked flags: loads the model (imports torch)."""
    import torch

    from causvid.config import denoising_steps, generator_is_causal
    from causvid.pipelines.cli import FPS, build_generator
    from causvid.serve.app import ServeOptions, create_app
    from causvid.toy.marker import is_toy_folder

    torch.set_num_threads(args.threads)
    wan = args.wan_model_path
    if wan is None and Path(args.config_path).resolve() == toy_config():
        wan = str(toy_folder())
    gen = build_generator(argparse.Namespace(config_path=args.config_path, wan_model_path=wan, device=args.device,
                                             dtype=None, lora=args.lora), args.checkpoint_path, causal=True)
    if not generator_is_causal(gen.config):
        raise UsageError(f"--config_path {args.config_path}: a bidirectional model cannot stream; give a causal one")
    kv_window(gen.config, args)
    if not denoising_steps(gen.config):
        print(f"note: {args.config_path} has no denoising_step_list: 50-step sampling, the stream will be slow",
              file=sys.stderr)
    folder = wan or gen.config.wan_model_path
    weights = Path(args.checkpoint_path or folder).resolve()
    shown = weights.relative_to(CHECKOUT) if weights.is_relative_to(CHECKOUT) else weights
    name = f"{Path(args.config_path).stem} ({shown})"
    toy = is_toy_folder(folder)
    options = ServeOptions(model_name=name, fps=FPS if args.fps is None else args.fps, video_fps=FPS,
                           max_sessions=args.max_sessions, allow_origins=tuple(args.allow_origin),
                           max_message_bytes=args.max_message_bytes,
                           suggestions=TOY_PROMPTS if toy else [], vocabulary=toy_vocabulary() if toy else {})
    return create_app(gen.components, gen.config, options), name


def kv_window(config, args) -> None:
    """Apply --local_attn_size / --sink_size / --rope_positions to the config every stream's session reads."""
    kwargs = config.model_kwargs
    if args.local_attn_size is not None or args.sink_size is not None:
        windowed = kwargs.local_attn_size != -1  # else the session's endless default: training length, one block
        kwargs.local_attn_size = args.local_attn_size or (kwargs.local_attn_size if windowed else
                                                          int(config.image_or_video_shape[1]))
        kwargs.sink_size = args.sink_size if args.sink_size is not None else (
            kwargs.sink_size if windowed else int(config.num_frame_per_block))
        if kwargs.sink_size + int(config.num_frame_per_block) > kwargs.local_attn_size:
            raise UsageError(f"--sink_size {kwargs.sink_size}: a window of {kwargs.local_attn_size} latent frames "
                             f"must hold the sink and a block of {config.num_frame_per_block}; give a smaller sink "
                             "or a larger --local_attn_size")
    if args.rope_positions is not None:
        kwargs.rope_positions = args.rope_positions


def toy_vocabulary() -> dict:
    """The words the toy student was trained on: its captions are `causvid.toy.world.caption`'s
    "a <colour> <shape> moving <direction>"."""
    from causvid.toy.world import COLOURS, DIRECTIONS, SHAPES

    return {"colours": list(COLOURS), "shapes": list(SHAPES), "directions": list(DIRECTIONS),
            "other": ["a", "moving"]}


def main(argv=None, serve=None) -> int:
    args = parser().parse_args(argv)
    check(args)
    sock = bind(args.host, args.port)  # a busy port is answered before the model loads
    try:
        app, name = build(args)
        logger = logging.getLogger("causvid.serve")
        if not logger.handlers:  # refused handshakes and failed generations, one line each on stderr
            logger.addHandler(logging.StreamHandler())
            logger.setLevel(logging.INFO)
        where = "loopback only" if args.host in ("127.0.0.1", "localhost", "::1") else "REACHABLE FROM OTHER MACHINES"
        threads = f"{args.threads} CPU thread{'s' if args.threads > 1 else ''}"
        print(f"serving {name} at {url_of(sock)} ({where}; {threads}; Ctrl-C stops)", flush=True)
        if serve is None:
            from causvid.serve.server import run as serve
        serve(app, sock)
    finally:
        sock.close()
    print(f"stopped; served {app.state.sessions.served} session(s), wrote nothing", flush=True)
    return 0


def cli() -> int:
    """The `causvid-serve` console script."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
