"""What autograd keeps for backward, counted: every tensor a forward saves (through
``torch.autograd.graph.saved_tensors_hooks``), each storage once (views share their base's),
parameters and buffers left out (they are the weights, counted apart), attributed to the encoder
block that saved it first. Works on the ``meta`` device (shapes only, no compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class SavedBytes:
    """Bytes autograd keeps for backward, split by where they were saved.

    ``outside``: saved outside the encoder blocks (patch embedding, neck, decoder, loss);
    ``blocks[i]``: first saved inside encoder block i; ``block_inputs[i]``: the size of block i's
    input when block i saved anything (what a checkpointed block keeps instead);
    ``largest``: the largest tensor any operation produced (saved or not).
    """

    outside: float = 0.0
    blocks: list[float] = field(default_factory=list)
    block_inputs: list[float] = field(default_factory=list)
    largest: float = 0.0

    def kept(self, checkpointing: bool = False) -> float:
        """Bytes held from forward to backward; with every block checkpointed only their inputs stay."""
        return self.outside + sum(self.block_inputs if checkpointing else self.blocks)

    def recompute(self) -> float:
        """A checkpointed block's activations, rebuilt during backward (the largest block)."""
        return max(self.blocks, default=0.0)

    def combine(self, other: SavedBytes, a: float, b: float) -> SavedBytes:
        """``a * self + b * other``, per field (``largest``: the max)."""
        return SavedBytes(a * self.outside + b * other.outside,
                          [a * x + b * y for x, y in zip(self.blocks, other.blocks)],
                          [a * x + b * y for x, y in zip(self.block_inputs, other.block_inputs)],
                          max(self.largest, other.largest))


class _LargestOutput(TorchDispatchMode):
    """Records the largest new tensor any operator returns (views of its inputs are not new)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and storage_key(t) not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def storage_key(t: torch.Tensor) -> int:
    """One key per storage (views of a tensor share it; valid on ``meta`` too)."""
    return t.untyped_storage()._cdata


def count_saved(run, *, module: nn.Module, blocks: list[nn.Module] = (), keep_graph: bool = True) -> tuple[SavedBytes, object]:
    """Run ``run()`` (a forward building the graph) counting what it saves for backward; returns
    the counts and ``run``'s result. ``keep_graph=False`` drops each saved tensor once counted
    (the result cannot backward; memory stays at the forward's working set, the counts are the
    same: a storage is recognised while it lives, by a weak reference, so a freed one whose
    address is reused counts as new)."""
    weights = {storage_key(t) for t in [*module.parameters(), *module.buffers()]}
    seen: dict[int, tuple[StorageWeakRef, int, int]] = {}  # storage key -> (ref, bytes, block index or -1)
    current = [-1]
    inputs: dict[int, int] = {}  # block index -> bytes of its input unless already saved outside the blocks
    counted: list[tuple[int, int]] = []  # (bytes, block) of every distinct storage saved

    def alive(key: int) -> bool:
        return key in seen and not seen[key][0].expired()

    def pack(t: torch.Tensor):
        key = storage_key(t)
        if key not in weights and not alive(key):
            storage = t.untyped_storage()
            seen[key] = (StorageWeakRef(storage), storage.nbytes(), current[0])
            counted.append((storage.nbytes(), current[0]))
        return t if keep_graph else None

    def enter(index):
        def hook(_module, args):
            key = storage_key(args[0])
            inputs[index] = 0 if alive(key) and seen[key][2] < 0 else args[0].untyped_storage().nbytes()
            current[0] = index
        return hook

    def leave(_module, _args, _output):
        current[0] = -1

    handles = [h for i, b in enumerate(blocks) for h in (b.register_forward_pre_hook(enter(i)), b.register_forward_hook(leave))]
    largest = _LargestOutput()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), largest:
            result = run()
    finally:
        for handle in handles:
            handle.remove()
    counts = SavedBytes(outside=sum(n for n, where in counted if where < 0),
                        blocks=[sum(n for n, where in counted if where == i) for i in range(len(blocks))],
                        largest=largest.largest)
    counts.block_inputs = [inputs.get(i, 0) if counts.blocks[i] > 0 else 0 for i in range(len(blocks))]
    return counts, result
