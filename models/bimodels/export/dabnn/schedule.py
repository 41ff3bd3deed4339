"""Order daBNN's layer groups so that each in-place layer runs after every other reader of its input.

daBNN's Affine, Relu, PRelu and Add overwrite their input; the export inserts no copies, so
an order must exist or the export is refused, naming the readers that would come too late.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from biformats.dabnn import DabLayer

from .. import ExportError
from .values import RUNTIME, Group

if TYPE_CHECKING:
    from .lowering import Lowering


def schedule(lw: Lowering) -> list[DabLayer]:
    """Order the groups so each in-place layer runs after every other reader of its input."""
    groups = lw.groups
    producer = {g.writes: j for j, g in enumerate(groups)}
    for j, g in enumerate(groups):
        g.index = j
        g.deps = {producer[lw.vals[r].root] for r in g.reads if lw.vals[r].root in producer}
    # drop groups nothing needs
    needed: set[int] = set()
    stack: list[int | None] = [producer.get(lw.vals[lw.output].root)]
    while stack:
        top = stack.pop()
        if top is None or top in needed:
            continue
        needed.add(top)
        stack.extend(groups[top].deps)
    if not needed:
        raise ExportError(f"{RUNTIME} has nothing to run: the model's output is its input")
    live = [g for g in groups if g.index in needed]
    readers_of_root: dict[str, list[int]] = {}
    for g in live:
        for r in set(g.reads):
            readers_of_root.setdefault(lw.vals[r].root, []).append(g.index)
    protected = lw.protected()
    for g in live:
        if g.clobbers is None:
            continue
        root = lw.vals[g.clobbers].root
        if root in protected:
            what = (
                "the model's input (the caller's buffer)"
                if root == lw.ir.inputs[0].name
                else "the model's output"
            )
            lw.problems.setdefault("in-place", []).append(
                f"an in-place {g.clobber_op} (node {g.node}) that would overwrite {what}: daBNN has no copy op"
            )
            continue
        g.deps |= {j for j in readers_of_root.get(root, []) if j != g.index}
    lw.raise_problems()
    done: set[int] = set()
    order: list[Group] = []
    pending = sorted(live, key=lambda g: g.index)
    while pending:
        ready = next((g for g in pending if g.deps <= done), None)
        if ready is None:
            g, others = blocked(lw, pending, readers_of_root, done)
            raise ExportError(
                f"{RUNTIME} cannot express an in-place {g.clobber_op} (node {g.node}) on '{g.clobbers}': daBNN "
                f"overwrites its input, which {', '.join(others)} also read(s) after it; daBNN has no copy op and "
                "the export inserts none"
            )
        order.append(ready)
        done.add(ready.index)
        pending.remove(ready)
    layers = [layer for g in order for layer in g.layers]
    last = layers[-1].params["output"]
    if last != lw.vals[lw.output].dab:
        raise ExportError(
            f"{RUNTIME} reads the last layer's output, but the model's output is written earlier"
        )
    return layers


def blocked(
    lw: Lowering, pending: list[Group], readers_of_root: dict[str, list[int]], done: set[int]
) -> tuple[Group, list[str]]:
    """The in-place group that can never run: another reader of its input depends on it."""
    groups = lw.groups
    data_deps = {g.index: {producer for producer in g.deps} for g in groups}

    def depends_on(j: int, target: int) -> bool:
        seen, stack = set(), [j]
        while stack:
            k = stack.pop()
            if k == target:
                return True
            if k not in seen:
                seen.add(k)
                stack.extend(d for d in data_deps[k] if d not in done)
        return False

    for g in pending:
        if g.clobbers is None:
            continue
        others = [j for j in readers_of_root[lw.vals[g.clobbers].root] if j != g.index and j not in done]
        late = [groups[j].node for j in others if depends_on(j, g.index)]
        if late:
            return g, late
    g = next(g for g in pending if g.clobbers is not None)
    clobbered = lw.vals[g.clobbers].root if g.clobbers is not None else ""  # (never "": found above)
    return g, [groups[j].node for j in readers_of_root[clobbered] if j != g.index and j not in done]
