"""Bytes held for backward by every training stage, at the real widths, fitted and extrapolated (run by hand).

    python -m scripts.benchmark_memory                      # every stage, Wan2.1-1.3B widths, fp32 and bf16
    python -m scripts.benchmark_memory --stages self_forcing_dmd --dtypes bf16
    python -m scripts.benchmark_memory --plan               # per-GPU memory of each stage, 1.3B and 14B

Each stage's loss runs with random models of the preset's widths (dim, heads, ffn) but 1 and 2 blocks, on 21
latent frames of 4 and 8 tokens, under `causvid.training.memory.HeldForBackward` (tensors autograd saves +
inputs activation checkpointing keeps + caches carrying graph, each storage once, parameters left out). The four
counts fit bytes = a + b T + L (c + d T) exactly; a fifth (2 blocks, 16 tokens a frame) checks the fit. The
prediction is printed for 30 / 40 blocks at 480x832 (21 frames of 30x52 tokens) beside an 80 GB budget.
"""
import json
import sys
import time
from pathlib import Path

from causvid.config import load_config
from causvid.errors import ArgumentParser, UsageError, run_cli

# torch and the training code load in the functions that measure, once the flags are checked

ROOT = Path(__file__).resolve().parents[1]
#: stage name -> (config under configs/, overrides, roles measured). The critic's step is the same code in every
#: DMD stage (flow matching of the fake score on the generator's no-grad sample): measured for two of them.
STAGES = {
    "self_forcing_dmd": ("self_forcing_dmd", [], ("generator", "critic")),
    "causal_forcing_dmd_chunkwise": ("causal_forcing_dmd_chunkwise", [], ("generator",)),
    "causal_forcing_dmd_framewise": ("causal_forcing_dmd_framewise", [], ("generator",)),
    "long_rollout_dmd_x2": ("causal_forcing_dmd_chunkwise", ["long_rollout_frames=42"], ("generator",)),
    "causvid_dmd": ("wan_causal_dmd", [], ("generator",)),
    "bidirectional_dmd": ("wan_bidirectional_dmd", [], ("generator", "critic")),
    "ar_diffusion_tf_chunkwise": ("ar_diffusion_tf_chunkwise", [], ("generator",)),
    "causal_ode_chunkwise": ("causal_ode_chunkwise", [], ("generator",)),
    "causvid_ode": ("wan_causal_ode", [], ("generator",)),
    "causal_cd_chunkwise": ("causal_cd_chunkwise", [], ("generator",)),
}
FRAMES, REAL_TOKENS = 21, 21 * 30 * 52  # 480x832: 60x104 latents, 2x2 patches
GRID_HW = ((4, 4), (8, 4))  # latent H x W of the two fitted lengths: 4 and 8 tokens a frame
CHECK_HW = (8, 8)           # the check: 16 tokens a frame, 2 blocks
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # names of torch dtypes


def measure(stage_name, role, preset, layers, hw, dtype, real_preset=None):
    import torch

    from causvid.training.memory import held_bytes, stage_batch, stage_models
    from causvid.training.stages import make_stage

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    config, overrides, _ = STAGES[stage_name]
    cfg = load_config(ROOT / "configs" / f"{config}.yaml",
                      overrides=overrides + [f"image_or_video_shape=[1,{FRAMES},16,{hw[0]},{hw[1]}]"])
    stage = make_stage(cfg)
    models = stage_models(stage, preset, layers, dtype, real_preset)
    batch = stage_batch(stage, models, list(cfg.image_or_video_shape)[1:])
    return held_bytes(stage, models, batch, role)


def tokens(hw):
    return FRAMES * (hw[0] // 2) * (hw[1] // 2)


def fit_stage(stage_name, role, preset, dtype):
    from causvid.training.memory import LinearFit

    measured = {(layers, tokens(hw)): measure(stage_name, role, preset, layers, hw, dtype)
                for layers in (1, 2) for hw in GRID_HW}
    fit = LinearFit.from_grid((1, 2), tuple(tokens(hw) for hw in GRID_HW), measured)
    check = measure(stage_name, role, preset, 2, CHECK_HW, dtype)
    return fit, check, fit(2, tokens(CHECK_HW))


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m scripts.benchmark_memory", description=__doc__.split("\n")[0])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--budget_gb", type=float, default=80.0)
    p.add_argument("--json", help="also write the figures here (rewritten after every row)")
    p.add_argument("--plan", action="store_true", help="print per-GPU memory plans from --plan_from")
    committed = sorted(map(str, (ROOT / "docs" / "benchmarks").glob("memory_cpu_*.json")))
    p.add_argument("--plan_from", nargs="+", default=committed,
                   help="--json files of this script (default: the committed ones, docs/benchmarks/memory_cpu_*.json)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.plan:
        missing = [f for f in args.plan_from if not Path(f).is_file()]
        if missing:
            raise UsageError(f"--plan_from {missing[0]}: no such file (give --json files of this script)")
        from causvid.training.memory_plan import print_plan
        files = [json.loads(Path(f).read_text()) for f in args.plan_from]
        print_plan(dict(files[0], rows=[row for f in files for row in f["rows"]]))
        return 0
    import torch

    from causvid.models.wan.presets import get_preset
    torch.set_num_threads(args.threads)
    try:
        cfg = get_preset(args.preset)
    except KeyError as err:
        raise UsageError(f"--preset {args.preset}: {err.args[0]}") from None
    rows, started = [], time.time()
    print(f"{args.preset} widths (dim {cfg.dim}, {cfg.num_heads} heads, ffn {cfg.ffn_dim}); bytes held for backward, "
          f"fitted on 1-2 blocks x {[tokens(hw) for hw in GRID_HW]} tokens, checked at 2 x {tokens(CHECK_HW)}")
    print(f"{'stage':30} {'role':9} {'dtype':5} {'KB/token/layer':>14} {'fit err':>8} "
          f"{'30 layers GB':>12} {'40 layers GB':>12}  (480x832, 21 frames; budget {args.budget_gb:g} GB)")
    for name in args.stages:
        for role in STAGES[name][2]:
            for dname in args.dtypes:
                fit, check, predicted = fit_stage(name, role, args.preset, DTYPES[dname])
                row = dict(stage=name, role=role, dtype=dname, preset=args.preset, dim=cfg.dim,
                           a=fit.a, b=fit.b, c=fit.c, d=fit.d, check_measured=check, check_predicted=predicted,
                           gb_30=fit(30, REAL_TOKENS) / 1e9, gb_40=fit(40, REAL_TOKENS) / 1e9)
                rows.append(row)
                flag = lambda gb: f"{gb:10.1f}{' !' if gb > args.budget_gb else '  '}"  # noqa: E731
                print(f"{name:30} {role:9} {dname:5} {fit.d / 1024:14.2f} {abs(check / predicted - 1):8.2%} "
                      f"{flag(row['gb_30'])} {flag(row['gb_40'])}", flush=True)
                if args.json:  # after every row: a long run stopped midway keeps what it measured
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps(dict(rows=rows, real_tokens=REAL_TOKENS, frames=FRAMES),
                                                          indent=1))
    print(f"{len(rows)} rows in {time.time() - started:.0f} s" + (f"; written to {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
