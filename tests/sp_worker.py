"""One tiny WanDiT's forward and backward in every attention mode, for tests/test_sequence_parallel.py: imported
for the one-process reference, and run under torchrun (the job sp_split_dit of tests/torchrun_jobs.py, or alone as
`sp_worker.py OUT_DIR SP [SP ...]`) with sequence parallelism over groups of SP ranks (the other ranks' factor is
FSDP's "dp_shard"), one pass per SP given.
Each rank writes OUT_DIR/sp{SP}_rank{RANK}.pt: its samples' outputs and input gradients, the losses, and the
full parameter gradients (summed over the sequence-parallel group, averaged over dp_shard as training does)."""
import sys
from pathlib import Path

import torch

from causvid.models.wan.dit import WanDiT
from causvid.models.wan.presets import get_preset

BATCH, FRAMES, HEIGHT, WIDTH = 2, 4, 4, 6  # 2x2 patches: 6 tokens per frame (padded to 8 pieces by 4 ranks)
MODES = ("bidirectional", "block_causal", "teacher_forcing", "cached", "cached_window")


def make_model():
    torch.manual_seed(0)  # the same weights on every rank
    model = WanDiT(get_preset("tiny"), num_heads=4)
    with torch.no_grad():  # Wan zeroes the head at init: any non-zero weights, so every gradient flows
        model.head.head.weight.normal_(std=0.1)
    return model


def make_inputs():
    g = torch.Generator().manual_seed(1)
    cfg = get_preset("tiny")
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    shape = (BATCH, FRAMES, cfg.in_dim, HEIGHT, WIDTH)
    return {"x": randn(*shape), "clean": randn(*shape), "context": randn(BATCH, 5, cfg.text_dim),
            "t": torch.rand(BATCH, FRAMES, generator=g) * 1000, "weight": randn(*shape)}


def forward(model, mode, x, clean, context, t):
    if mode == "bidirectional":
        return model(x, t, context)
    if mode == "block_causal":  # Self-Forcing's [1, 3] layout
        return model(x, t, context, causal=True, num_frame_per_block=3, independent_first_frame=True)
    if mode == "teacher_forcing":
        return model(x, t, context, causal=True, num_frame_per_block=2, clean_x=clean)
    # a Self-Forcing rollout, framewise: a no-grad step, the exit step with gradient, the no-grad cache refresh
    window = dict(max_frames=FRAMES) if mode == "cached" else \
        dict(local_attn_size=2, sink_size=1, rope_positions="window")
    cache = model.new_cache(x.shape[0], **window)
    outs = []
    for f in range(x.shape[1]):
        xf, tf = x[:, f:f + 1], t[:, f:f + 1]
        with torch.no_grad():
            model(xf, tf, context, cache=cache, start_frame=f)
        out = model(xf * 0.5, tf * 0.5, context, cache=cache, start_frame=f)
        with torch.no_grad():
            model(out, torch.zeros_like(tf), context, cache=cache, start_frame=f)
        outs.append(out)
    return torch.cat(outs, dim=1)


def run(model, mode, inputs, samples, reduce_grads=lambda model: None):
    """Forward and backward on `samples` of the inputs; the loss is their mean. Returns outputs, the loss, the
    inputs' gradients and the parameters' (full tensors)."""
    leaves = {k: inputs[k][samples].clone().requires_grad_(True) for k in ("x", "clean", "context")}
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = mode != "bidirectional"
    out = forward(model, mode, leaves["x"], leaves["clean"], leaves["context"], inputs["t"][samples])
    loss = (out * inputs["weight"][samples]).flatten(1).sum(1).mean()
    loss.backward()
    reduce_grads(model)
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return {"out": out.detach(), "loss": loss.item(), "params": grads,
            "inputs": {k: v.grad for k, v in leaves.items() if v.grad is not None}}


def main(out_dir, *sizes):
    from causvid.training import distributed as D

    d = D.init_distributed()
    inputs = make_inputs()
    for sp in map(int, sizes):
        mesh = D.parallel_mesh(d, sp)
        dp_rank, dp_size = mesh.get_local_rank("dp_shard"), mesh["dp_shard"].size()
        model = D.sequence_parallel(D.shard(make_model(), False), mesh)
        samples = list(range(BATCH))[dp_rank::dp_size]
        results = {}
        for mode in MODES:
            r = run(model, mode, inputs, samples, lambda m: D.reduce_sequence_parallel_grads(m, mesh))
            r["loss"] = D.mean_across_ranks(r["loss"], d.device)
            # the reference's loss is the mean over the whole batch: its input gradients are dp_size times smaller
            r["inputs"] = {k: v / dp_size for k, v in r["inputs"].items()}
            results[mode] = r
        torch.save({"samples": samples, "results": results}, Path(out_dir) / f"sp{sp}_rank{d.rank}.pt")


if __name__ == "__main__":
    import torch.distributed as dist

    main(*sys.argv[1:])
    dist.destroy_process_group()
