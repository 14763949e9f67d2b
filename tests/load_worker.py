"""Under torchrun (the job sharded_load of tests/torchrun_jobs.py): build a DiT on the meta device, shard it, fill
it from a Wan folder (training's load), and dump each rank's local shards and the rows it read. Not a test module."""
import sys

import torch

from causvid.models.wan import checkpoints
from causvid.pipelines.text_to_video import open_dit
from causvid.training import distributed as D


def main(folder, out):
    dist = D.init_distributed()
    reads = []
    read = checkpoints.LazyTensor.__getitem__

    def recording(self, index):
        part = read(self, index)
        reads.append(part.numel())
        return part

    checkpoints.LazyTensor.__getitem__ = recording
    try:
        model = D.materialize(*open_dit(folder), dist.device, mixed_precision=False)
    finally:  # tests/torchrun_jobs.py runs other jobs in this process after this one
        checkpoints.LazyTensor.__getitem__ = read
    local = {name: D.local(p).detach().clone() for name, p in model.named_parameters()}
    torch.save({"local": local, "read": sum(reads), "rank": dist.rank}, f"{out}.{dist.rank}")


if __name__ == "__main__":
    main(*sys.argv[1:])
