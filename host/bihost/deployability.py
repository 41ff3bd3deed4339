"""Which algorithm runs where, and at what cost: computed by exporting, never hand-written.

Each (algorithm, runtime) cell is what an export attempt returns:
- native: every binary op maps to the runtime's binary kernels;
- composite: runs exactly, with extra float ops (listed, with how many layers need each);
- unsupported: the exporter refused (the reason names the operator), or the runtime's
  output disagreed with torch where the runtime is installed here.
`bihost profile` files its `unsupported` rows from the same export attempts.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from biagent import numerics
from biagent.numerics import Case, CheckResult

from .artifacts import NoExporter, check_cases, export_format


@dataclass
class Cell:
    status: str  # native | composite | unsupported
    reason: str = ""
    extra_ops: dict[str, int] = field(default_factory=dict)  # float op -> number of layers that need it
    checked: bool = False  # numerics compared with torch on this machine
    max_rel_error: float | None = None  # the largest over the check inputs
    rel_errors: list[float] = field(default_factory=list)  # one per check input
    unchecked: str = ""  # why the numerics were not compared here (the runtime is missing or unusable)
    numerics: str = ""  # the check's failures, or how a mismatch was explained (a rounding flip)

    def as_dict(self) -> dict:
        return asdict(self)


def export_for(runtime: str, model, example) -> tuple[bytes, dict[str, int]]:
    """The artifact `runtime` loads, and the extra float ops it needed (op -> layer count)."""
    import bimodels
    from bimodels.export import export_with_report

    fmt = export_format(runtime)
    if fmt not in bimodels.list_formats():
        raise NoExporter(f"no exporter writes {fmt!r} (the {runtime} format) yet")
    result = export_with_report(model, fmt, example)
    return result.data, dict(result.extra_ops)


def check_artifact(runtime: str, fmt: str, data: bytes, model, cases: list[Case]) -> CheckResult:
    """Run the artifact in the locally installed runtime and judge it (biagent.numerics):
    the same rule as the agent's check before a latency counts, with torch's single-flip
    alternatives made on demand for a runtime that cannot show its sign inputs."""
    from biagent.runtimes import get_runtime
    from bimodels.numerics import alternatives_on_demand

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model.{fmt}"
        path.write_bytes(data)
        rt = get_runtime(runtime)()
        loaded = rt.load(path, threads=1)
        try:
            return numerics.check(
                loaded,
                cases,
                probing=lambda: rt.load_probing(path, threads=1),
                alternatives=alternatives_on_demand(model, cases),
            )
        finally:
            loaded.close()


def cell(
    arch: str, algorithm: str, runtime: str, pad_value: float = 0.0, check: bool = True, seed: int = 0
) -> Cell:
    import torch

    import bimodels
    from biagent.runtimes import get_runtime

    torch.manual_seed(seed)
    model = bimodels.trained_like_norms(bimodels.create_model(arch), seed)
    model = bimodels.binarize(model, algorithm, pad_value=pad_value).eval()
    example = bimodels.example_input(model, 1, seed=seed)
    try:
        data, extra = export_for(runtime, model, example)
    except (bimodels.ExportError, NoExporter) as exc:
        return Cell("unsupported", str(exc))
    status = "composite" if extra else "native"
    reason = (
        ""
        if not extra
        else "extra float ops per layer: " + ", ".join(f"{op} x{n}" for op, n in extra.items())
    )
    result = Cell(status, reason, extra)
    if not check:
        return result
    info = get_runtime(runtime).describe()
    if not info.installed:
        result.unchecked = f"{runtime} is not usable here: {info.detail}"
        return result
    cases = check_cases(model, seed)
    outcome = check_artifact(runtime, export_format(runtime), data, model, cases)
    errors = [
        v.error / max(float(np.abs(c.expected[0]).max()), 1e-12) for v, c in zip(outcome.verdicts, cases)
    ]
    result.checked, result.max_rel_error, result.rel_errors = True, max(errors), errors
    result.numerics = outcome.reason
    if not outcome.ok:
        return Cell(
            "unsupported",
            f"exported, but its output disagrees with torch: {outcome.reason}",
            extra,
            True,
            max(errors),
            errors,
            numerics=outcome.reason,
        )
    return result


def matrix(
    arch: str, algorithms: list[str], runtimes: list[str], pad_value: float = 0.0, check: bool = True
) -> dict[str, dict[str, Cell]]:
    return {a: {r: cell(arch, a, r, pad_value, check) for r in runtimes} for a in algorithms}
