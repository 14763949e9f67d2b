"""Peak memory per rank while training loads a DiT: built on the meta device, sharded, filled with each rank's rows
(`distributed.materialize`), against every rank loading the full model and then sharding it. Run by hand:

    python scripts/benchmark_load.py                 # a mid-size DiT (dim 1024, 16 blocks: 1.1 GB fp32), worlds 1 2 4

CPU and gloo under torchrun; per rank, the peak RSS growth during the load (Linux VmHWM, reset before the load:
it counts the checkpoint's pages a rank maps and reads, which are the kernel's page cache, shared and
reclaimable) and the anonymous memory it holds after (RssAnon: its shards), beside full / world, the least a
rank can hold.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MID = dict(dim=1024, ffn_dim=4096, num_heads=8, num_layers=16)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(folder: str, mode: str, out: str):
    import torch

    from causvid.pipelines.text_to_video import load_dit, open_dit
    from causvid.training import distributed as D

    dist = D.init_distributed()
    torch.distributed.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before, anon = rss_kib("VmRSS"), rss_kib("RssAnon")
    if mode == "materialize":
        model = D.materialize(*open_dit(folder), dist.device, mixed_precision=False)
    else:
        model = D.shard(load_dit(folder), mixed_precision=False)
    peak, held = rss_kib("VmHWM") - before, rss_kib("RssAnon") - anon
    local = sum(D.local(p).numel() * p.element_size() for p in model.parameters())
    Path(f"{out}.{dist.rank}").write_text(json.dumps(dict(peak=peak * 1024, held=held * 1024, local=local)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--worker", nargs=3, metavar=("FOLDER", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(*args.worker)
    import torch

    from causvid.models.wan import WanDiT
    from causvid.tiny_wan.dit import wan_config_json

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "wan"
        folder.mkdir()
        model = WanDiT.from_preset("wan2.1-t2v-1.3b", **MID)
        full = sum(t.numel() * t.element_size() for t in model.parameters())
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "diffusion_pytorch_model.safetensors"))
        (folder / "config.json").write_text(json.dumps(wan_config_json(model)))
        del model
        print(f"DiT dim {MID['dim']}, {MID['num_layers']} blocks: {full / 2**30:.2f} GiB fp32; peak RSS growth per "
              "rank during the load (GiB)")
        print(f"{'world':>5} {'full / world':>12} {'meta + fill: peak, held after':>30} "
              f"{'full load, then shard: peak, held after':>40}")
        for world in args.worlds:
            row = []
            for mode in ("materialize", "full"):
                out = Path(tmp) / f"{mode}{world}"
                subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={world}", __file__, "--worker", str(folder), mode, str(out)],
                               check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
                row.append((max(r["peak"] for r in ranks) / 2**30, max(r["held"] for r in ranks) / 2**30))
            print(f"{world:5d} {full / world / 2**30:12.2f} {row[0][0]:21.2f} {row[0][1]:8.2f} "
                  f"{row[1][0]:31.2f} {row[1][1]:8.2f}", flush=True)
        del torch
    print("done; figures above (nothing written)")


if __name__ == "__main__":
    main()
