"""DiT block offload (the official ``--num_persistent_param_in_dit``, counted in blocks).

``offload_blocks(model, resident=N, device)`` keeps the first ``N`` blocks and everything
outside the blocks on ``device``; the weights of the other blocks live in pinned host memory
and pass through two device-side slots: while block ``k`` runs in one slot, block ``k + 1`` is
copied into the other on a side stream (the copy waits until the block that last used that
slot has finished on the compute stream, and block ``k + 1`` waits for its copy). Device
memory for the streamed blocks is two blocks' worth whatever their number.

Every tensor of a block (parameters and buffers: LoRA-merged, fp8 or 8-bit quantised weights
alike) is streamed as stored. Applied after ``torch.compile`` of the blocks: the streaming
runs in a thin uncompiled wrapper around each compiled block, which only repoints the block's
tensors (``.data``) at its slot. Not combined with FSDP (the blocks are then sharded already).
On the CPU the same code runs with synchronous copies (the tests check it changes no number).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["BlockOffload", "offload_blocks"]


def _tensors(block: nn.Module) -> list[torch.Tensor]:
    return [*block.parameters(), *block.buffers()]


class _Streamed(nn.Module):
    """A streamed block: slot in before the call, release after."""

    def __init__(self, block: nn.Module, offload: BlockOffload, k: int):
        super().__init__()
        self.block, self.k = block, k
        self._offload = [offload]  # a list: not registered as a submodule

    def forward(self, *args, **kwargs):
        off = self._offload[0]
        off.enter(self.k)
        try:
            return self.block(*args, **kwargs)
        finally:
            off.leave(self.k)


class BlockOffload:
    """The streaming state of one model: host copies, two slots, their copy/free events."""

    def __init__(self, blocks: list[nn.Module], device: torch.device):
        self.device = device
        self.blocks = blocks
        self.host = [[t.data for t in _tensors(b)] for b in blocks]  # pinned host copies
        sig = [(t.shape, t.dtype) for t in self.host[0]]
        for i, h in enumerate(self.host):
            if [(t.shape, t.dtype) for t in h] != sig:
                raise ValueError(f"offload: streamed block {i} differs in its tensors from the first")
        self.slots = [[torch.empty(s, dtype=d, device=device) for s, d in sig] for _ in range(2)]
        cuda = device.type == "cuda"
        self.side = torch.cuda.Stream(device) if cuda else None
        self.copied = [torch.cuda.Event() if cuda else None for _ in range(2)]
        self.freed = [torch.cuda.Event() if cuda else None for _ in range(2)]
        self.loaded: list[int | None] = [None, None]  # the block each slot holds (or is receiving)

    def prefetch(self, k: int) -> None:
        """Start copying streamed block ``k`` into its slot (no-op past the last block)."""
        if k >= len(self.blocks):
            return
        s = k % 2
        if self.loaded[s] == k:
            return
        if self.side is None:
            for dst, src in zip(self.slots[s], self.host[k]):
                dst.copy_(src)
        else:
            self.side.wait_event(self.freed[s])  # the slot's previous block has finished
            with torch.cuda.stream(self.side):
                for dst, src in zip(self.slots[s], self.host[k]):
                    dst.copy_(src, non_blocking=True)
            self.copied[s].record(self.side)
        self.loaded[s] = k

    def enter(self, k: int) -> None:
        s = k % 2
        self.prefetch(k)
        if self.side is not None:
            torch.cuda.current_stream(self.device).wait_event(self.copied[s])
        for t, slot in zip(_tensors(self.blocks[k]), self.slots[s]):
            t.data = slot
        self.prefetch(k + 1)

    def leave(self, k: int) -> None:
        s = k % 2
        if self.side is not None:
            self.freed[s].record(torch.cuda.current_stream(self.device))
        for t, host in zip(_tensors(self.blocks[k]), self.host[k]):
            t.data = host
        if k == len(self.blocks) - 1:
            self.prefetch(0)  # the next forward's first streamed block, behind this one's tail


def offload_blocks(model: nn.Module, resident: int, device: torch.device | str) -> BlockOffload | None:
    """Keep ``model.blocks[:resident]`` and all but the blocks on ``device``, stream the rest
    (see the module). The model may start anywhere (a CPU-loaded DiT for a card it does not fit
    on). Returns the streaming state, or None when every block is resident."""
    from torch.distributed.tensor import DTensor

    device = torch.device(device)
    blocks = model.blocks
    resident = max(0, int(resident))
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ValueError("offload: the DiT is FSDP-sharded; block offload needs whole blocks (parallel.fsdp=false)")
    for name, child in model.named_children():
        if name != "blocks":
            child.to(device)
    for b in list(blocks)[:resident]:
        b.to(device)
    streamed = list(blocks)[resident:]
    if not streamed:
        return None
    for b in streamed:
        for t in _tensors(b):
            host = t.data.to("cpu")
            t.data = host.pin_memory() if device.type == "cuda" else host
    off = BlockOffload(streamed, device)
    for k, b in enumerate(streamed):
        blocks[resident + k] = _Streamed(b, off, k)
    return off
