"""Sequence parallelism for the Wan DiT: DeepSpeed-Ulysses (2309.14509) over a process group of `size` ranks that
share one sample.

Layout. Every rank holds a piece of every frame: the S tokens of a frame (h*w patches, in (h, w) order) are
padded with zeros to size * n (n = ceil(S / size)) and rank r keeps tokens [r*n, (r+1)*n) of each frame, so its
local sequence is [B, frames * n, D], still frame-major. The DiT's per-frame modulation (`_per_frame`) therefore
works on the shard unchanged, for any number of frames (a cached block of one frame, Self-Forcing's first frame,
teacher forcing's [clean ‖ noisy] frames alike). Self-attention trades the token pieces for heads with one
all-to-all (`to_heads`): each rank then holds the whole sequence, in its original order and without the padding,
for num_heads / size heads, so RoPE, the attention masks and the KV cache (which then holds the head shard) act
exactly as without sequence parallelism; a second all-to-all (`to_sequence`) brings the attention output back to
token pieces. Cross-attention needs no exchange: local queries, the full text K/V. After the head `gather`
assembles the output on every rank.

Gradient. The all-to-all is its own adjoint (chunk i goes to rank i and comes back from it), so its backward is
the reverse exchange. Inside the DiT the ranks' gradients are partial: a tensor computed identically on every
rank (patch tokens, time and text embeddings) receives from each rank only its own tokens' share, and so does
every parameter; the parameters' gradients are summed over the group by the trainer
(`training.distributed.reduce_sequence_parallel_grads`). The DiT's output is assembled on every rank and the
loss is computed from it on every rank alike, so `gather`'s backward keeps the rank's own piece of the (equal)
full gradient; an input that carries gradient enters through `enter`, whose backward sums the partial input
gradients, so the tensors outside the DiT get the full gradient on every rank.

`SequenceParallel(group, num_heads)` is the hook a `WanDiT` holds (`model.sequence_parallel`; None = none);
each forward makes a `SequenceShard` for its frame size and hands it to the blocks.
"""
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


# -- the exchanges, over a given process group --------------------------------------------------------------------

def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """Chunk i of dim 0 goes to rank i; chunk i of the result came from rank i. Backward: the same exchange."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_to_all(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.group), None


class _Gather(torch.autograd.Function):
    """[...] -> [size, ...] stacked from every rank. Backward: this rank's piece of the gradient, which every rank
    holds in full and alike (the loss is computed from the gathered tensor on every rank)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank], None


class _SumGradients(torch.autograd.Function):
    """Identity; backward sums the gradient over the group (Megatron's "f" at the entry of a parallel region)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    return _AllToAll.apply(x, group)


def all_gather(x: torch.Tensor, group) -> torch.Tensor:
    return _Gather.apply(x, group)


def sum_gradients(x: torch.Tensor, group) -> torch.Tensor:
    return _SumGradients.apply(x, group)


def _pad(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad dim `dim` of x at its end to `size`."""
    extra = size - x.shape[dim]
    return x if extra == 0 else F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, extra))


# -- the DiT's hook -----------------------------------------------------------------------------------------------

class SequenceParallel:
    """The sequence-parallel group a WanDiT runs over (see the module docstring)."""

    def __init__(self, group, num_heads: int):
        self.group, self.size, self.rank = group, dist.get_world_size(group), dist.get_rank(group)
        if num_heads % self.size:
            raise ValueError(f"sequence_parallel_size={self.size} does not divide num_heads={num_heads}: Ulysses "
                             "splits the heads over the group; choose a divisor of num_heads")

    def shard(self, frame_tokens: int) -> "SequenceShard":
        """One forward's layout: frames of `frame_tokens` tokens."""
        return SequenceShard(self.group, self.size, self.rank, frame_tokens)


@dataclass(frozen=True)
class SequenceShard:
    group: object
    size: int
    rank: int
    frame_tokens: int  # S, the tokens of one frame

    @property
    def piece(self) -> int:
        """Tokens of each frame a rank holds (the frame padded to size * piece)."""
        return -(-self.frame_tokens // self.size)

    def enter(self, x):
        """An input of the DiT computed alike on every rank: its gradient is summed over the group."""
        return sum_gradients(x, self.group) if x is not None and x.requires_grad else x

    def split(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, frames*S, D] (the same on every rank) -> this rank's [B, frames*piece, D]."""
        x = _pad(tokens.unflatten(1, (-1, self.frame_tokens)), 2, self.size * self.piece)
        return x[:, :, self.rank * self.piece:(self.rank + 1) * self.piece].flatten(1, 2)

    def _unshuffle(self, parts: torch.Tensor) -> torch.Tensor:
        """[size, N, frames*piece, ...] (rank r's pieces at r) -> [N, frames*S, ...] in the original order."""
        x = parts.unflatten(2, (-1, self.piece)).movedim(0, 2).flatten(2, 3)  # [N, frames, size*piece, ...]
        return x[:, :, :self.frame_tokens].flatten(1, 2)

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of `split`: every rank's [B, frames*piece, D] -> [B, frames*S, D] on every rank."""
        return self._unshuffle(all_gather(tokens, self.group))

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Token pieces of all heads [N, frames*piece, H, d] -> the whole sequence for this rank's heads
        [N, frames*S, H/size, d] (heads [rank*H/size, (rank+1)*H/size))."""
        x = x.unflatten(2, (self.size, -1)).movedim(2, 0)  # [size (head group), N, frames*piece, H/size, d]
        return self._unshuffle(all_to_all(x, self.group))

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_heads`: [N, frames*S, H/size, d] -> [N, frames*piece, H, d]."""
        x = _pad(x.unflatten(1, (-1, self.frame_tokens)), 2, self.size * self.piece)
        x = x.unflatten(2, (self.size, self.piece)).movedim(2, 0).flatten(2, 3)  # [size (piece), N, frames*piece, ...]
        return all_to_all(x, self.group).movedim(0, 2).flatten(2, 3)  # heads back in order (group, head)
