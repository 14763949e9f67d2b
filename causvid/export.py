"""Hand a student over: write its DiT in the Wan original layout, the diffusers layout, or as a LoRA of its base.

    python -m causvid.export --wan_model_path wan_models/Wan2.1-T2V-1.3B \
        [--checkpoint_path RUN_FOLDER | checkpoint_model_XXXXXX | model.pt | FOLDER] [--use_ema] \
        --to wan|diffusers|lora [--rank 32 | --rank 4,8,16,32,full] --out PATH

- `--to wan`: PATH/config.json + PATH/diffusion_pytorch_model.safetensors in Wan's own key names: the folder
  Wan's, Self-Forcing's and Causal Forcing's loaders (`WanModel.from_pretrained`) and ours read.
- `--to diffusers`: PATH/config.json + safetensors that `WanTransformer3DModel.from_pretrained(PATH)` loads
  (`pipe.transformer = ...` puts it into a `WanPipeline`).
- `--to lora`: PATH (.safetensors): the student minus the Wan folder's DiT, each Linear layer's change truncated
  to rank R by SVD, in the ComfyUI / Kijai Wan LoRA keys that ComfyUI's LoRA loader and diffusers'
  `WanPipeline.load_lora_weights` read (format: `causvid/models/lora.py`). Several ranks write one file each
  (PATH's stem + `_rankR`). Per rank it prints the relative weight error ||W_r - W_s|| / ||W_s - W_base|| over all
  tensors and the relative output error ||f_r(x) - f_s(x)|| / ||f_s(x)|| of a bidirectional forward on a fixed
  input (rank 0: the base itself).
Without --checkpoint_path the Wan folder's own DiT is exported (e.g. a Wan folder written in the diffusers
layout). Every file is safetensors, with the run's config and the base in its metadata.
"""
import json
import shutil
from pathlib import Path

from causvid.errors import ArgumentParser, UsageError, run_cli
from causvid.pipelines.cli import _training_config
from causvid.runtime import check_device_name, check_wan_folder

# torch and the model code are imported where they are used, once the flags are checked: `--help` and a bad flag,
# path or rank answer at once (tests/test_startup.py)

DEFAULT_RANK = 32  # the rank the published CausVid / Self-Forcing LoRAs of Wan2.1-14B use


def parse_ranks(text: str) -> list:
    """'4,8,full' -> [4, 8, None] (None: full rank, exact)."""
    ranks = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "full":
            ranks.append(None)
        elif part.isdigit() and int(part) > 0:
            ranks.append(int(part))
        else:
            raise UsageError(f"--rank {text}: expected positive integers or 'full', comma-separated (e.g. 8,16,full)")
    return ranks


def resolve_checkpoint(path) -> Path:
    """A training run's folder -> its newest checkpoint's model.pt; a checkpoint_model_XXXXXX folder -> its
    model.pt; anything else (a .pt, .safetensors, a Wan or diffusers folder) as it is."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--checkpoint_path {path}: no such file or folder")
    if path.is_dir() and (path / "model.pt").is_file():
        return path / "model.pt"
    if path.is_dir() and any(path.glob("checkpoint_model_*")):
        from causvid.training.checkpointing import latest_checkpoint

        latest = latest_checkpoint(path)
        if latest is None:
            raise UsageError(f"--checkpoint_path {path}: a run folder without a complete checkpoint_model_XXXXXX")
        return latest / "model.pt"
    return path


def metadata(args, checkpoint, extra=None) -> dict:
    """safetensors metadata (strings): what was exported from what, and the run's config when it is known."""
    from causvid.models.wan.checkpoints import read_folder_config

    meta = {"causvid.export": args.to, "causvid.base": str(Path(args.wan_model_path).resolve()),
            "causvid.base_config": json.dumps(read_folder_config(args.wan_model_path) or {}, sort_keys=True),
            "causvid.checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "",
            "causvid.use_ema": str(bool(args.use_ema)).lower()}
    run = _training_config(Path(checkpoint)) if checkpoint else None
    if run is not None:
        meta["causvid.run_config"] = Path(run[0]).read_text(encoding="utf-8")
    return {**meta, **(extra or {})}


def fixed_input(model, seed: int = 0) -> tuple:
    """A small bidirectional forward's input: 2 latent frames of 2x2 patches, t = 500, a short random prompt."""
    import torch

    c = model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2 * c.patch_size[0], c.in_dim, 2 * c.patch_size[1], 2 * c.patch_size[2], generator=gen)
    context = torch.randn(1, min(c.text_len, 8), c.text_dim, generator=gen)
    return x, torch.tensor([500.0]), context


def output(model, inputs):
    import torch

    x, t, context = inputs
    with torch.no_grad():
        return model(x.to(model.device, model.dtype), t.to(model.device), context.to(model.device, model.dtype)).float()


def relative(a, b) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def export_lora(args, student, checkpoint, ranks, out: Path, device) -> list:
    """Write one LoRA file per rank; print each rank's errors; the files written."""
    import torch
    from tqdm import tqdm

    from causvid.models.lora import is_linear_weight, lora_deltas, lora_tensors, save_lora, svd, weight_deltas
    from causvid.pipelines.text_to_video import load_dit

    if checkpoint is None:
        raise UsageError("--to lora needs --checkpoint_path: a LoRA is the student's difference from the Wan "
                         "folder's DiT, and without a checkpoint there is none")
    base = load_dit(args.wan_model_path, dtype=torch.float32, device=device).eval()
    # on CPU (the base's own tensors are overwritten below); the SVDs run on --device
    base_state = {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}
    student_state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    deltas = weight_deltas(base_state, student_state)
    if not deltas:
        raise UsageError(f"--checkpoint_path {checkpoint}: the student's weights equal the base's; nothing to export")
    delta_norm = torch.sqrt(sum(d.pow(2).sum() for d in deltas.values()))
    inputs = fixed_input(student)
    target = output(student, inputs)
    print(f"{'rank':>6}  {'weight error':>12}  {'output error':>12}  {'size':>10}")
    print(f"{0:>6}  {1.0:>12.3e}  {relative(output(base, inputs), target):>12.3e}  {'(the base)':>10}")
    svd_cache, written = {}, []
    if any(rank is not None for rank in ranks):  # one SVD per changed Linear layer, shared by every rank
        linear = [n for n, d in deltas.items() if is_linear_weight(n, d)]
        for name in tqdm(linear, desc="SVD of the Linear layers' changes"):
            svd_cache[name.rsplit(".", 1)[0]] = tuple(t.cpu() for t in svd(deltas[name].to(device)))
    for rank in ranks:
        tensors = lora_tensors(deltas, base_state, rank, svd_cache, dtype=getattr(torch, args.dtype))
        applied = lora_deltas(tensors, base_state, "export")
        err = torch.sqrt(sum((applied.get(k, 0) - d).pow(2).sum() for k, d in deltas.items()))
        with torch.no_grad():
            for name, p in base.named_parameters():
                p.copy_((base_state[name] + applied[name] if name in applied else base_state[name]).to(p.device))
        out_err = relative(output(base, inputs), target)
        path = out if len(ranks) == 1 else out.with_name(f"{out.stem}_rank{rank or 'full'}{out.suffix}")
        # each file says what it loses: its relative weight error and output error (a fixed input), as printed
        extra = {"causvid.rank": str(rank or "full"), "causvid.weight_error": f"{float(err / delta_norm):.6e}",
                 "causvid.output_error": f"{out_err:.6e}"}
        save_lora(path, tensors, metadata(args, checkpoint, extra))
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"{rank or 'full':>6}  {float(err / delta_norm):>12.3e}  {out_err:>12.3e}  {size / 2**20:>8.1f}MB")
        written.append(path)
    return written


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wan_model_path", required=True, help="the base Wan2.1 folder (Wan or diffusers layout)")
    p.add_argument("--checkpoint_path", help="the student: a training run's folder (its newest checkpoint), a "
                   "checkpoint_model_XXXXXX folder, a .pt / .safetensors, or a Wan / diffusers folder; default: the "
                   "Wan folder's own DiT")
    p.add_argument("--use_ema", action="store_true", help="export the checkpoint's EMA weights ('generator_ema')")
    p.add_argument("--to", required=True, choices=["wan", "diffusers", "lora"], help="the layout to write")
    p.add_argument("--rank", help=f"--to lora: the rank(s), comma-separated, 'full' for the exact difference "
                   f"(default {DEFAULT_RANK})")
    p.add_argument("--out", required=True, help="the folder (wan, diffusers) or .safetensors file (lora) to write")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the written tensors (default float32, as the Wan2.1 release)")
    p.add_argument("--device", default="cpu", help="where the weights are loaded and the SVDs run (cpu, cuda)")
    args = p.parse_args(argv)

    wan = check_wan_folder(args.wan_model_path, "--wan_model_path")
    checkpoint = resolve_checkpoint(args.checkpoint_path) if args.checkpoint_path else None
    if args.rank is not None and args.to != "lora":
        raise UsageError("--rank applies to --to lora only")
    ranks = parse_ranks(args.rank) if args.rank is not None else [DEFAULT_RANK]
    out = Path(args.out)
    if args.to == "lora" and out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: a LoRA is one .safetensors file; name it e.g. {out.with_suffix('.safetensors')}")
    if out.exists():
        raise UsageError(f"--out {out} exists; remove it or choose another path (nothing is overwritten)")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    check_device_name(args.device)
    import torch  # the flags hold: now the model code

    from causvid.pipelines.text_to_video import load_dit
    from causvid.runtime import pick_device
    from causvid.tiny_wan.dit import write_diffusers_dit, write_wan_dit

    device = pick_device(args.device)
    student = load_dit(wan, checkpoint, use_ema=args.use_ema, dtype=torch.float32, device=device).eval()
    dtype = getattr(torch, args.dtype)

    if args.to == "lora":
        written = export_lora(args, student, checkpoint, ranks, out, device)
        print(f"wrote {len(written)} LoRA file(s): {', '.join(map(str, written))}")
        return 0
    if args.to == "diffusers" and student.config.prediction != "flow":
        raise UsageError(f"{checkpoint or wan}: an {student.config.prediction}-prediction model (the toy world's); "
                         "diffusers' WanTransformer3DModel predicts flow: export it --to wan instead")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if args.to == "wan":
            write_wan_dit(student, tmp, dtype=dtype, metadata=metadata(args, checkpoint))
        else:
            write_diffusers_dit(student, tmp, subfolder="", dtype=dtype, metadata=metadata(args, checkpoint))
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote the {'Wan original' if args.to == 'wan' else 'diffusers'} layout of "
          f"{checkpoint or 'the base DiT'} to {out}")
    return 0


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
