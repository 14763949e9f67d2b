"""The command line: flags (parsed before torch loads), the run, and the summary table."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from causvid.errors import ArgumentParser, UsageError
from causvid.runtime import check_output_folder, torch_cuda_build
from causvid.threads import add_threads_flag
from scripts.device_check.runner import _selected, run_parts


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.device_check", description="One prepared device check: every GPU figure and GPU-only code path of the project.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON file (rewritten after every part)")
    p.add_argument("--budget_s", type=float, default=480.0,
                   help="stop after this many seconds: the running part is stopped, the rest recorded as skipped")
    p.add_argument("--smoke", action="store_true", help="every part at toy size on the CPU")
    p.add_argument("--parts", help="comma-separated part names or prefixes (e.g. inference,wan14b); default all")
    p.add_argument("--keep_done", action="store_true", help="keep the parts already 'ok' in --out and skip them")
    p.add_argument("--repeats", type=int, help="timed runs per inference part (default 2; smoke 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per inference part (compile happens here)")
    p.add_argument("--train_steps", type=int, help="steps per training part, the last one reported (default 2; "
                                                   "smoke 1): the first includes the allocator's and kernels' warm-up")
    p.add_argument("--peak_tflops", type=float, help="the device's peak TFLOP/s for MFU (default: from its name)")
    p.add_argument("--compile_backend", help="torch.compile backend (default inductor; smoke aot_eager)")
    add_threads_flag(p)
    p.add_argument("--workdir", help="where the training part writes its random model and data (default: a temp "
                                     "folder, removed at the end)")
    p.add_argument("--fail_part", default="", help="debug: comma-separated parts made to fail (tests the recording)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats {args.repeats}: give at least 1")
    if args.train_steps is not None and args.train_steps < 1:
        p.error(f"--train_steps {args.train_steps}: give at least 1")
    try:
        check_output_folder(Path(args.out).parent, "--out")
    except UsageError as err:
        p.error(str(err))
    if not args.smoke and torch_cuda_build() is None:  # told before torch loads
        raise SystemExit("device_check: no CUDA device here; run with --smoke for the CPU check")
    return args


def headline(part: dict) -> str:
    r = part.get("result") or {}
    if part["status"] != "ok":
        return (part.get("error") or part.get("reason") or "")[:70]
    if "fps" in r:
        v = r.get("with_vae") or {}
        mfu = r["flops"]["mfu"]
        pixels = (v.get("first_block_pixels_s") or {}).get("median", float("nan"))
        return (f"{r['fps']:.2f} FPS, +VAE {v.get('fps', float('nan')):.2f} FPS, first block "
                f"{r['first_block_s']['median'] * 1e3:.0f} ms / pixels {pixels * 1e3:.0f} ms, "
                f"{r['peak_memory']['peak_bytes'] / 2 ** 30:.1f} GiB" + (f", MFU {mfu:.1%}" if mfu else ""))
    if "switch_to_next_block_s" in r:
        return (f"re-cache {r['recache_s']['median'] * 1e3:.0f} ms + next block {r['next_block_s']['median'] * 1e3:.0f}"
                f" ms")
    if "rollout" in r:
        return f"rollout rel err {r['rollout']['rel_err']:.2e}, one forward {r['one_forward']['rel_err']:.2e}"
    if "rel_err" in r:
        return f"max abs {r['max_abs_diff']:.2e}, rel err {r['rel_err']:.2e}"
    if "seconds_per_step" in r:
        return f"{r['seconds_per_step']:.2f} s/step, {r['peak_memory']['peak_bytes'] / 2 ** 30:.1f} GiB"
    if "block_s" in r:
        mfu = r["flops"]["mfu"]
        return (f"block {r['block_s']['median'] * 1e3:.0f} ms ({r['forward_s'] * 1e3:.0f} ms/forward), "
                f"{r['peak_memory']['peak_bytes'] / 2 ** 30:.1f} GiB" + (f", MFU {mfu:.1%}" if mfu else ""))
    if "device" in r:
        return f"{r['device']}, torch {r['torch']}, CUDA {r['torch_cuda']}"
    return ""


def main(argv=None) -> dict:
    args = parse_args(argv)
    from causvid.threads import use_threads
    from scripts.device_check.check import Check
    from scripts.device_check.parts import default_parts

    check = Check(args)
    use_threads(args.threads, check.device.type, None, log=check.log)
    out = Path(args.out)
    keep = None
    if args.keep_done and out.exists():
        keep = json.loads(out.read_text()).get("parts", {})
    selection = [s.strip() for s in args.parts.split(",") if s.strip()] if args.parts else None
    fail = {s.strip() for s in args.fail_part.split(",") if s.strip()}
    parts = default_parts()
    unknown = sorted(n for n in (selection or []) + sorted(fail) if not any(_selected(p.name, [n]) for p in parts))
    if unknown:
        raise SystemExit(f"device_check: unknown part(s) {unknown} in --parts / --fail_part; parts: "
                         + ", ".join(p.name for p in parts))
    meta = dict(command=" ".join(["python -m scripts.device_check"] + list(sys.argv[1:] if argv is None else argv)),
                smoke=check.smoke, device=check.device_name, budget_s=args.budget_s,
                started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), settings=asdict(check.settings),
                compile_backend=check.compile_backend, train_steps=check.train_steps,
                peak_tflops=check.peak, peak_source=check.peak_source)
    check.log(f"device check on {check.device_name}{' (smoke)' if check.smoke else ''}, budget {args.budget_s:g} s, "
              f"writing {out}")
    try:
        results = run_parts(parts, check, out, meta, args.budget_s, selection, fail, keep)
    finally:
        check.cleanup()
    check.log("")
    for name, part in results["parts"].items():
        check.log(f"{name:<32} {part['status']:<8} {part.get('seconds', 0):>7.1f} s  {headline(part)}")
    counts = {s: sum(p["status"] == s for p in results["parts"].values()) for s in ("ok", "error", "skipped")}
    check.log(f"wrote {out} ({counts['ok']} ok, {counts['error']} failed, {counts['skipped']} skipped; "
              f"{results['meta']['state']})")
    return results
