"""`bihost export`: write one binarized model as a deployable artifact."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from ..output import console, print_json
from .common import build_model


@click.command("export")
@click.option("--arch", default="resnet18", show_default=True, help="Architecture (see `bihost models`).")
@click.option(
    "--algo", default="bnn", show_default=True, help="Algorithm, or 'fp' for the full-precision model."
)
@click.option(
    "--format", "fmt", default="onnx", show_default=True, help="Export format (see `bihost models`)."
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Artifact path."
)
@click.option("--seed", default=0, show_default=True, help="Seed for random weights and the example input.")
@click.option("--num-classes", type=int, default=None, help="Classifier width (default: the architecture's).")
@click.option(
    "--pad-value",
    type=click.Choice(["0", "1", "-1"]),
    default="0",
    show_default=True,
    help="Value of padded positions in binary convs.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Trained state dict to load instead of random weights.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def command(
    arch: str,
    algo: str,
    fmt: str,
    output: Path,
    seed: int,
    num_classes: int | None,
    pad_value: str,
    checkpoint: Path | None,
    as_json: bool,
) -> None:
    """Binarize ARCH with ALGO and write the artifact atomically (no partial files)."""
    import bimodels

    model = build_model(
        arch,
        None if algo == "fp" else algo,
        seed=seed,
        num_classes=num_classes,
        pad_value=float(pad_value),
        checkpoint=checkpoint,
    )
    example = bimodels.example_input(model, batch_size=1, seed=seed)
    data = bimodels.export(model, fmt, example)
    _write_atomically(output, data)
    summary: dict[str, Any] = {
        "path": str(output),
        "format": fmt,
        "arch": arch,
        "algorithm": algo,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "binary_layers": len(bimodels.binary_layers(model)),
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"wrote {output} ({len(data):,} bytes, {summary['binary_layers']} binary layers, "
            f"sha256 {summary['sha256'][:16]}...)"
        )


def _write_atomically(path: Path, data: bytes) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an artifact is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
