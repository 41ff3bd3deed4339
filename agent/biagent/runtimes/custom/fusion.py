"""Graph rewrites of the custom runtime: chains of nodes that become one kernel call.

Every rewrite computes the same floats as the nodes it replaces (the same float32
operations in the same order); it only skips passes over memory and per-node overhead.
A value that anything else reads (another node, a graph output) is never fused away.

* binary_conv -> channel_affine -> add -> hardtanh (each after the conv optional, in this
  order): the successors run in the conv's epilogue (FusedBinaryConv below). This is
  a binary ResNet block's tail: batch norm, the shortcut, the activation before the next sign.
* a binary conv (fused or not) whose output only another binary conv reads: it writes
  that conv's packed sign bits (ops.PackedActs) instead of floats, the
  "thresholding to packed output bits" of a binary ResNet block's first conv.
* conv (direct stem kernel) -> channel_affine -> hardtanh -> max_pool (each optional): the
  affine and clamp run in the conv's registers, and the pool reads each block of 8 output
  channels while it is in cache (FusedStemConv below). A ResNet stem.
* channel_affine -> hardtanh: one pass (ops.ChannelAffine with clamp_to).

Each fused node runs with the settings of the op it was built from (the model's KernelSettings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import numpy as np

from . import ops
from .ops import StemPost


# -- the fused nodes ---------------------------------------------------------------------------
class FusedBinaryConv:
    """binary_conv with its next nodes fused (see ops.PostOps): one pass over the output instead
    of up to four. Falls back to the nodes one by one where the C conv does not run.

    bits_for: the binary conv that alone reads this output. Then only its sign bits are
    written, straight into that conv's packed input (ops.PackedActs): 1 bit instead of a float
    per value, and no packing pass in the next layer."""

    def __init__(self, conv: ops.BinaryConv, post: ops.PostOps, bits_for: ops.BinaryConv | None = None):
        self.conv, self.post, self.bits_for = conv, post, bits_for

    def fused(self) -> bool:
        conv = self.conv  # the channel-packed C conv of a conv kind (packed), without a gain
        return isinstance(conv, ops.BinaryConvC) and conv.packed is not None and conv.gain is None

    def __call__(self, x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray | ops.PackedActs:
        if self.post.residual and residual is None:
            raise ValueError("the fused add needs its second input")
        if self.fused():
            return cast(ops.BinaryConvC, self.conv).run(x, self.post, residual, self.bits_for)
        return self.post.apply(self.conv(x), residual, self.conv.settings)


class FusedStemConv:
    """A direct conv with its next nodes fused (see StemPost): the pool reads each block of
    8 channels while it is still in cache, and the conv output is never written whole."""

    def __init__(self, conv: ops.Conv, post: StemPost):
        self.conv, self.post = conv, post

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if isinstance(self.conv, ops.ConvC) and self.conv.direct is not None:
            return self.conv.direct_call(x, self.post)
        return self.post.apply(self.conv(x), self.conv.settings)


# -- the rewrites -------------------------------------------------------------------------------
def fuse(
    nodes: list, outputs: Iterable[str], shapes: dict[str, tuple[int, ...]], make_node: Callable
) -> list:
    """Apply every rewrite. `make_node(op, name, inputs, output, fn)` builds an engine Node."""
    nodes = fuse_conv_epilogues(nodes, outputs, shapes, make_node)
    nodes = fuse_packed_outputs(nodes, outputs, make_node)
    nodes = fuse_stems(nodes, outputs, make_node)
    return fuse_affine_clamp(nodes, outputs, make_node)


def _readers(nodes: list, outputs: Iterable[str]) -> dict[str, list]:
    readers: dict[str, list] = {name: [None] for name in outputs}  # a graph output: read from outside
    for node in nodes:
        for v in node.inputs:
            readers.setdefault(v, []).append(node)
    return readers


def _sole_reader(readers: dict[str, list], value: str):
    found = readers.get(value, [])
    return found[0] if len(found) == 1 else None


def _plain_affine(node) -> bool:
    return isinstance(node.fn, ops.ChannelAffine) and node.fn.clamp_to is None


def _is_clamp(node) -> bool:
    return isinstance(node.fn, ops.Clamp)


def _extend(chain: list, readers: dict[str, list], accepts: Callable) -> bool:
    """Append the sole reader of the chain's last value when it `accepts` it."""
    nxt = _sole_reader(readers, chain[-1].output)
    if nxt is not None and accepts(nxt):
        chain.append(nxt)
        return True
    return False


def _chain_node(make_node: Callable, chain: list, inputs: list, fn) -> object:
    return make_node(
        "+".join(n.op for n in chain), "+".join(n.name for n in chain), inputs, chain[-1].output, fn
    )


def fuse_conv_epilogues(
    nodes: list, outputs: Iterable[str], shapes: dict[str, tuple[int, ...]], make_node: Callable
) -> list:
    readers = _readers(nodes, outputs)
    chains = []
    for node in nodes:
        conv = node.fn
        if not (
            isinstance(conv, ops.BinaryConv)
            and conv.packed is not None
            and conv.kind != "linear"
            and conv.gain is None
        ):
            continue
        chain = [node]
        affine = chain[-1] if _extend(chain, readers, _plain_affine) else None
        value = chain[-1].output
        add = (
            chain[-1]
            if _extend(
                chain,
                readers,
                lambda n, value=value: (
                    n.op == "add"
                    and len(n.inputs) == 2
                    and n.inputs.count(value) == 1
                    and shapes.get(n.inputs[0]) == shapes.get(n.inputs[1])
                ),
            )
            else None
        )
        clamp = chain[-1].fn if _extend(chain, readers, _is_clamp) else None
        if len(chain) == 1:
            continue
        inputs = list(node.inputs) + [v for v in (add.inputs if add else []) if v != value]
        post = ops.PostOps(
            affine.fn.scale if affine else None,
            affine.fn.shift if affine else None,
            add is not None,
            None if clamp is None else (float(clamp.lo), float(clamp.hi)),
        )
        # the fused node runs where the chain's last node ran: by then the residual exists
        chains.append((chain, _chain_node(make_node, chain, inputs, FusedBinaryConv(conv, post))))
    return _rebuild(nodes, chains)


def _packs_2d(conv) -> bool:
    return (
        isinstance(conv, ops.BinaryConv)
        and conv.packed is not None
        and conv.kind == "conv2d"
        and len(conv.kernel) == 2
    )


#: Below this many output channels a conv writes floats and its reader packs them: measured on one
#: 16-channel 3x3 conv at 32x32, writing the next conv's sign bits took 14.6 us against 9.95 for
#: floats plus 2.3 for the reader's own packing (at 32 channels the two tie, at 64 the bits win).
PACKED_OUTPUT_MIN_CHANNELS = 32


def fuse_packed_outputs(nodes: list, outputs: Iterable[str], make_node: Callable) -> list:
    readers = _readers(nodes, outputs)
    rewritten = []
    for node in nodes:
        fn = node.fn
        conv = fn.conv if isinstance(fn, FusedBinaryConv) else fn
        nxt = _sole_reader(readers, node.output)
        ok = (
            _packs_2d(conv)
            and conv.gain is None
            and conv.cout >= PACKED_OUTPUT_MIN_CHANNELS
            and nxt is not None
            and nxt.inputs[0] == node.output
            and node.output not in nxt.inputs[1:]
        )
        if ok:
            reader = nxt.fn.conv if isinstance(nxt.fn, FusedBinaryConv) else nxt.fn
            ok = _packs_2d(reader) and not reader.mean_abs
            if isinstance(nxt.fn, FusedBinaryConv):
                ok = ok and nxt.fn.fused()
        if not ok:
            rewritten.append(node)
            continue
        post = fn.post if isinstance(fn, FusedBinaryConv) else ops.PostOps()
        rewritten.append(
            make_node(
                f"{node.op}+sign",
                node.name,
                node.inputs,
                node.output,
                FusedBinaryConv(conv, post, bits_for=reader),
            )
        )
    return rewritten


def _rebuild(nodes: list, chains: list[tuple[list, object]]) -> list:
    """Each chain's fused node takes the place of the chain's last node; the rest go."""
    replaced = {id(chain[-1]): fused for chain, fused in chains}
    dropped = {id(n) for chain, _ in chains for n in chain[:-1]}
    return [replaced.get(id(n), n) for n in nodes if id(n) not in dropped]


def fuse_stems(nodes: list, outputs: Iterable[str], make_node: Callable) -> list:
    readers = _readers(nodes, outputs)
    chains = []
    for node in nodes:
        if not (isinstance(node.fn, ops.Conv) and node.fn.direct is not None):
            continue
        chain = [node]
        affine = chain[-1].fn if _extend(chain, readers, _plain_affine) else None
        clamp = chain[-1].fn if _extend(chain, readers, _is_clamp) else None
        pool = (
            chain[-1].fn
            if _extend(chain, readers, lambda n: isinstance(n.fn, ops.MaxPool) and len(n.fn.kernel) == 2)
            else None
        )
        if len(chain) > 1:
            post = StemPost(
                affine.scale if affine else None,
                affine.shift if affine else None,
                None if clamp is None else (float(clamp.lo), float(clamp.hi)),
                pool,
            )
            chains.append((chain, _chain_node(make_node, chain, node.inputs, FusedStemConv(node.fn, post))))
    return _rebuild(nodes, chains)


def fuse_affine_clamp(nodes: list, outputs: Iterable[str], make_node: Callable) -> list:
    """channel_affine -> hardtanh (batch norm, then the activation before a sign) becomes one
    pass over memory, when nothing else reads the affine's output."""
    readers = _readers(nodes, outputs)
    chains = []
    for node in nodes:
        chain = [node]
        if _plain_affine(node) and _extend(
            chain, readers, lambda n, node=node: _is_clamp(n) and n.inputs == [node.output]
        ):
            clamp = chain[-1].fn
            fn = ops.ChannelAffine(node.fn.scale, node.fn.shift, node.fn.settings, (clamp.lo, clamp.hi))
            chains.append((chain, _chain_node(make_node, chain, node.inputs, fn)))
    return _rebuild(nodes, chains)
