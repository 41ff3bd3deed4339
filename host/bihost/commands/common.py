"""Helpers shared by the model-building verbs."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def resolve_names(spec: str, known: list[str], kind: str) -> list[str]:
    """'all', one name or a comma-separated list of `known` names; an unknown one lists the known ones."""
    if spec == "all":
        return list(known)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in known:
            raise UserError(f"unknown {kind} {n!r}; known {kind}s: {', '.join(known)}")
    return names


def resolve_algorithms(spec: str) -> list[str]:
    """'all', one name or a comma-separated list; unknown names fail listing the known ones."""
    import bimodels

    if spec == "all":
        return bimodels.list_algorithms()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        bimodels.get_algorithm(name)
    return names


def build_model(
    arch: str,
    algo: str | None,
    *,
    seed: int,
    num_classes: int | None = None,
    base=None,
    pad_value: float = 0.0,
    checkpoint: Path | None = None,
):
    """A (binarized) model with seeded random weights, or weights from a local checkpoint."""
    import torch

    import bimodels

    if base is None:
        bimodels.get_arch_info(arch)
        torch.manual_seed(seed)
        base = bimodels.create_model(arch, num_classes=num_classes)
    model = base if algo is None else bimodels.binarize(base, algo, pad_value=pad_value)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def load_checkpoint(model, path: Path) -> None:
    """Load a state dict saved with torch.save(model.state_dict(), path) (strict)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise UserError(f"checkpoint {path} is not a readable torch state dict: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"checkpoint {path} does not fit this model: {first}") from None
