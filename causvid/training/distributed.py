"""The only file that knows about processes and sharding: process-group setup, FSDP2 wrapping, the sharded
EMA, and gathering full state dicts.

Training always runs in a process group (a single process gets a group of one), so one code path serves
`python train.py` and `torchrun --nnodes N --nproc_per_node M train.py`. Every trained DiT is sharded with
FSDP2 (`fully_shard` per transformer block, then the root); gloo on CPU, NCCL on GPU. The one exception is a
group of one on CPU, which has nothing to shard and no mixed precision to gain: there FSDP2 only adds DTensor
dispatch and gloo copies (a toy teacher step took 1.27x as long wrapped, 2 threads), so the model stays a plain
module; everything below takes plain and sharded parameters alike.
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the torchrun group (env RANK / WORLD_SIZE / MASTER_ADDR ...) or make a group of one."""
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        backend = "nccl" if cuda else "gloo"
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
        else:  # plain `python train.py`
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return Dist(rank, world, local_rank, device)


def shard(model: torch.nn.Module, mixed_precision: bool, offload: bool = False) -> torch.nn.Module:
    """FSDP2 over every rank: each transformer block is its own shard unit, then the rest of the model.
    Parameters stay fp32 (the optimizer's master copy); with mixed precision on CUDA, compute runs in bf16 and
    gradients are reduced in fp32. offload (CUDA): the shards live in CPU memory, each unit's copied in for its
    compute. With sequence parallelism too the shards span every rank (as torchtitan shards over its data and
    context dims together): the ranks of a group need the same weights, gathered for compute anyway."""
    cuda = torch.cuda.is_available()
    if dist.get_world_size() == 1 and not cuda:
        return model  # see the module's docstring
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision and cuda else MixedPrecisionPolicy()
    options = dict(mp_policy=policy, offload_policy=CPUOffloadPolicy() if offload and cuda else OffloadPolicy())
    for block in model.blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def materialize(model: torch.nn.Module, state: dict, device, mixed_precision: bool,
                offload: bool = False) -> torch.nn.Module:
    """A model built on the meta device, sharded, then filled: each rank allocates and reads only its own rows
    of every parameter (FSDP2 shards dim 0 in `torch.chunk` pieces), so no rank ever holds a full copy.
    state: the checkpoint's tensors, unread (`checkpoints.open_wan_dit`)."""
    from causvid.models.wan.checkpoints import fill

    model = shard(model, mixed_precision, offload)
    model.to_empty(device="cpu" if offload else device)

    def rows(name, param):
        if not isinstance(param, DTensor):
            return param, 0, param.shape[0]
        shard_part = param.to_local()
        sharded = [m for m, placement in enumerate(param.placements) if placement.is_shard(0)]
        if not sharded:  # replicated
            return shard_part, 0, param.shape[0]
        size, pieces = param.shape[0], param.device_mesh.size(sharded[0])
        start = min(param.device_mesh.get_local_rank(sharded[0]) * -(-size // pieces), size)
        if shard_part.shape[0] != min(-(-size // pieces), size - start):
            raise RuntimeError(f"{name}: local shard of {shard_part.shape[0]} rows at row {start} of {size} is not "
                               f"a torch.chunk piece over {pieces} ranks")
        return shard_part, start, start + shard_part.shape[0]

    return fill(model, state, rows)


# -- sequence parallelism: a 2-D mesh (dp_shard, sp) ---------------------------------------------------------------

def parallel_mesh(d: Dist, sequence_parallel_size: int = 1) -> DeviceMesh:
    """The ranks as a (dp_shard, sp) grid: the `sp` consecutive ranks of a row share each sample (sequence
    parallelism, causvid/models/wan/sequence_parallel.py), each column's ranks read different samples. FSDP
    shards over all of them (`shard`)."""
    sp = int(sequence_parallel_size)
    if sp < 1 or d.world_size % sp:
        raise ValueError(f"sequence_parallel_size={sequence_parallel_size} must be a positive divisor of the "
                         f"number of processes ({d.world_size})")
    return init_device_mesh(d.device.type, (d.world_size // sp, sp), mesh_dim_names=("dp_shard", "sp"))


def sequence_parallel(model: torch.nn.Module, mesh: DeviceMesh) -> torch.nn.Module:
    """Give a WanDiT the mesh's sequence-parallel group (nothing to do for groups of one)."""
    from causvid.models.wan.sequence_parallel import SequenceParallel

    if mesh["sp"].size() > 1:
        model.sequence_parallel = SequenceParallel(mesh.get_group("sp"), model.config.num_heads)
    return model


def reduce_sequence_parallel_grads(model: torch.nn.Module, mesh: DeviceMesh) -> None:
    """FSDP has averaged every gradient over all ranks; the ranks of a sequence-parallel group each computed the
    gradient of their own tokens, which add up to the sample's: sum over the group, average over the data-parallel
    ranks = the average over all, times the group's size."""
    sp = mesh["sp"].size()
    if sp == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(sp)


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def sharded_parameters(model: torch.nn.Module):
    """named_parameters() in the sharded state. After a forward without backward (a no-grad rollout) FSDP2
    leaves the root's parameters gathered; reshard first so every rank sees its own shards."""
    if hasattr(model, "reshard"):
        model.reshard()
    return model.named_parameters()


class ShardedEMA:
    """Exponential moving average of a (sharded) model's trained parameters (all of them, or a LoRA's adapter),
    kept shard by shard: each rank averages only its own slice of every parameter, so an update costs no gather.
    The full EMA is assembled only when saved."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: local(p).detach().float().clone() for name, p in sharded_parameters(model)
                       if p.requires_grad}

    def _averaged(self, model):
        return ((name, p) for name, p in sharded_parameters(model) if name in self.shadow)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, p in self._averaged(model):
            self.shadow[name].lerp_(local(p).float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the average into `model`, a copy of the averaged one sharded the same way (a target network)."""
        for name, p in self._averaged(model):
            local(p).copy_(self.shadow[name])

    @torch.no_grad()
    def full_state_dict(self, model: torch.nn.Module) -> dict:
        """Every rank must call this (it gathers); the result is complete on every rank, on CPU. Each shadow
        shard is swapped into its parameter for the gather (FSDP's own sharding, padding included), then the
        parameter is put back."""
        out = {}
        for name, p in self._averaged(model):
            if not isinstance(p, DTensor):
                out[name] = self.shadow[name].cpu().clone()
                continue
            shard = p.to_local()
            kept = shard.clone()
            shard.copy_(self.shadow[name])
            out[name] = p.full_tensor().float().cpu().clone()  # a view of the shard on one rank
            shard.copy_(kept)
        return out

    def sharded_state_dict(self, model: torch.nn.Module) -> dict:
        """The shadow as the parameters are laid out (DTensors where they are sharded), sharing its storage."""
        out = {}
        for name, p in self._averaged(model):
            shadow = self.shadow[name]
            out[name] = DTensor.from_local(shadow, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                           stride=p.stride()) if isinstance(p, DTensor) else shadow
        return out

    def load_sharded_state_dict(self, model: torch.nn.Module, state: dict) -> None:
        for name, _ in self._averaged(model):
            self.shadow[name].copy_(local(state[name]))

    def load_full_state_dict(self, model: torch.nn.Module, state: dict) -> None:
        for name, p in self._averaged(model):
            full = state[name].float()
            if isinstance(p, DTensor):
                full = distribute_tensor(full.to(p.device), p.device_mesh, p.placements).to_local()
            if full.shape != local(p).shape:
                raise ValueError(f"EMA entry {name}: shard {tuple(full.shape)} vs parameter {tuple(local(p).shape)}")
            self.shadow[name] = full.to(local(p).device).clone()


# -- sharded checkpoints (torch.distributed.checkpoint): every rank writes its own shards ----------------------------

def sharded_state(models: dict, optimizers: dict, ema: "ShardedEMA" = None) -> dict:
    """The training state as each rank's shards, for `torch.distributed.checkpoint`, which reshards on load (save
    at one world size, resume at another). models / optimizers: {name: ...}, the optimizers' names among the
    models'; ema: the generator's, or None."""
    state = {name: get_model_state_dict(model) for name, model in models.items()}
    state["optimizers"] = {name: get_optimizer_state_dict(models[name], opt) for name, opt in optimizers.items()}
    if ema is not None:
        state["generator_ema"] = ema.sharded_state_dict(models["generator"])
    return state


def save_sharded(folder, models: dict, optimizers: dict, ema=None) -> None:
    """Every rank must call: writes `folder` (shards and metadata)."""
    import torch.distributed.checkpoint as dcp
    dcp.save(sharded_state(models, optimizers, ema), checkpoint_id=str(folder))


def load_sharded(folder, models: dict, optimizers: dict, ema=None) -> None:
    """Every rank must call: reads its shards of `folder`, whatever the world size that wrote it."""
    import torch.distributed.checkpoint as dcp
    state = sharded_state(models, optimizers, ema)
    dcp.load(state, checkpoint_id=str(folder))
    for name, model in models.items():
        set_model_state_dict(model, state[name])
    for name, opt in optimizers.items():
        set_optimizer_state_dict(models[name], opt, state["optimizers"][name])
    if ema is not None:
        ema.load_sharded_state_dict(models["generator"], state["generator_ema"])


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model) -> dict:
    """Full (unsharded) state dict on rank 0 (empty elsewhere); every rank must call."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model, optimizer) -> dict:
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_model_state(model, state: dict, strict: bool = True) -> None:
    """strict=False: `state` may hold part of the model (a LoRA's adapter); the rest is left as it is."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def mean_across_ranks(value: float, device) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def any_rank(flag: bool, device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier():
    dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
