"""The numerics rule: does a runtime compute what torch computes? One rule, used by the
agent's check before a latency counts, by `bihost matrix` and by the exporters' tests.

A binarized network amplifies rounding. A value the sign is taken of that lies within a few
float32 ulps of zero can land on either side in two correct implementations (another
summation order, batch norm applied in another order), and the flipped bit changes every
later layer: with random weights one such flip moves the output by several percent of its
range, as much as a wrong weight channel. So the output alone cannot tell rounding from an
export bug; the values the signs are taken of can.

The rule, per check input (every input must pass; there is no majority vote), numbered as
in docs/numerics.md:

1. The output matches the reference (torch, in float64) to ``atol + rtol * max|reference|``.
2. Or the runtime can show the values its signs are taken of (`LoadedModel.sign_inputs`,
   from a second, probing instance of the model whose outputs must equal the timed one's),
   and the first binary layer where a sign decision differs from the reference differs only
   at decisions the reference places within ``ROUNDING_MARGIN`` of the layer's largest
   |value|. Later layers are not judged: their flips follow from the first.
3. Or, for a runtime that cannot show them, torch in float64 with one of the decisions
   nearest zero (within ``ROUNDING_MARGIN``) flipped reproduces the output to the same
   tolerance (`Alternative`: made by the host, sent with the case or made on demand).
4. Anything else fails, with a reason naming the input, the error, and the first
   differing layer and margin when the runtime could show them. A wrong shape or a NaN
   where the reference has a number fails outright.

The reference decisions travel as `SignReference`s: one bit per decision, plus the
positions (and margins) of the fragile ones, so the agent needs no torch and a 224x224
ResNet costs a few hundred kB per input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .measure import max_abs_error

#: A decision whose reference value is closer to zero than this, relative to the largest
#: |value| in its layer, may go either way in a correct float32 implementation. Measured
#: here: onnxruntime's and torch's float32 values differ from torch's float64 ones by up to
#: 1.6e-6 of the layer's range on ResNet-18 (residual chains accumulate it); 1e-5 (about 80
#: float32 ulps of the range) leaves a margin above that. A wrong weight channel flips
#: decisions at 1e-2 and beyond.
ROUNDING_MARGIN = 1e-5
ATOL, RTOL = 1e-4, 1e-5


@dataclass(frozen=True)
class SignReference:
    """The reference's sign decisions for one binary layer's input on one check input."""

    shape: tuple[int, ...]
    bits: bytes  # np.packbits(value >= 0), C order
    fragile: np.ndarray  # flat indices of the decisions within ROUNDING_MARGIN of zero (int64)
    margins: np.ndarray  # their |value| / max |value| of the layer (float64)

    @classmethod
    def of(cls, values: np.ndarray) -> SignReference:
        """From the exact (float64) values a layer's sign is taken of."""
        v = np.asarray(values, dtype=np.float64)
        scale = max(float(np.abs(v).max()) if v.size else 0.0, 1e-30)
        rel = np.abs(v).ravel() / scale
        fragile = np.flatnonzero(rel <= ROUNDING_MARGIN).astype(np.int64)
        return cls(tuple(v.shape), np.packbits((v >= 0).ravel()).tobytes(), fragile, rel[fragile])

    def decisions(self) -> np.ndarray:
        n = int(np.prod(self.shape))
        return np.unpackbits(np.frombuffer(self.bits, dtype=np.uint8), count=n).astype(bool)

    def as_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """For an npz file (the agent's job file); `from_arrays` reads it back."""
        return {
            f"{prefix}_shape": np.asarray(self.shape, dtype=np.int64),
            f"{prefix}_bits": np.frombuffer(self.bits, dtype=np.uint8),
            f"{prefix}_fragile": self.fragile,
            f"{prefix}_margins": self.margins,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> SignReference:
        shape = tuple(int(d) for d in arrays[f"{prefix}_shape"])
        ref = cls(
            shape,
            arrays[f"{prefix}_bits"].astype(np.uint8).tobytes(),
            arrays[f"{prefix}_fragile"].astype(np.int64),
            arrays[f"{prefix}_margins"].astype(np.float64),
        )
        ref.validate()
        return ref

    def validate(self) -> None:
        n = int(np.prod(self.shape))
        if any(d < 0 for d in self.shape) or len(self.bits) != (n + 7) // 8:
            raise ValueError(
                f"sign reference of shape {self.shape} needs {(n + 7) // 8} bytes, has {len(self.bits)}"
            )
        if self.fragile.shape != self.margins.shape or (
            self.fragile.size and (self.fragile.min() < 0 or self.fragile.max() >= n)
        ):
            raise ValueError("sign reference: fragile positions out of range or without margins")


@dataclass(frozen=True)
class Alternative:
    """Torch's output with one fragile decision flipped: what a runtime that rounded the other
    way at that decision (and only there) computes."""

    layer: int  # binary layer (execution order)
    position: int  # flat index in the value the sign is taken of
    margin: float  # the decision's |value| / the layer's largest |value|
    expected: list[np.ndarray]


#: how many of the decisions nearest zero get an Alternative: real flips happen at 1e-7 of
#: the range, among the first few (LCE on xnor-resnet18: the nearest of 8).
ALTERNATIVES = 8


@dataclass
class Case:
    """One check input: what goes in, what torch computes, and torch's sign decisions."""

    inputs: list[np.ndarray]
    expected: list[np.ndarray]
    signs: list[SignReference] = field(default_factory=list)
    alternatives: list[Alternative] | None = None  # None: not computed (yet)


@dataclass(frozen=True)
class Flip:
    layer: int  # index of the binary layer (execution order) where decisions first differ
    count: int  # decisions that differ there
    decisions: int  # decisions in that layer
    margin: float  # the largest reference margin among them (an estimate from the runtime's
    # values where the reference did not list the decision as fragile)
    rounding: bool  # every differing decision was within ROUNDING_MARGIN in the reference

    def describe(self) -> str:
        where = f"binary layer {self.layer}: {self.count} of {self.decisions} sign decisions differ"
        if self.rounding:
            return f"{where}, all within {self.margin:.1e} of zero (rounding: <= {ROUNDING_MARGIN:g} of the layer's range)"
        return f"{where}, one at {self.margin:.1e} of the layer's range (> {ROUNDING_MARGIN:g}: not rounding)"


def first_flip(values: list[np.ndarray], references: list[SignReference]) -> Flip | None | str:
    """The first layer whose decisions differ; None if none does; a string if the runtime's
    values cannot be compared (another layer count or shape)."""
    if len(values) != len(references):
        return f"the runtime showed {len(values)} sign inputs, the reference has {len(references)}"
    for index, (v, ref) in enumerate(zip(values, references)):
        v = np.asarray(v)
        if v.size != int(np.prod(ref.shape)):
            return f"sign input {index} has shape {v.shape}, the reference {ref.shape}"
        flat = v.reshape(-1)
        differ = np.flatnonzero((flat >= 0) != ref.decisions())  # NaN >= 0 is False: sign -1, as the kernels
        if not differ.size:
            continue
        known = np.isin(differ, ref.fragile)
        if known.all():
            margin = float(ref.margins[np.isin(ref.fragile, differ)].max())
            return Flip(index, int(differ.size), flat.size, margin, True)
        finite = np.abs(flat[np.isfinite(flat)])
        scale = max(float(finite.max()) if finite.size else 0.0, 1e-30)
        outside = np.abs(flat[differ[~known]].astype(np.float64))
        margin = float(np.nan_to_num(outside, nan=np.inf).max()) / scale
        return Flip(index, int(differ.size), flat.size, max(margin, ROUNDING_MARGIN), False)
    return None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    error: float  # max |output - reference| of the timed model
    reason: str = ""  # why it failed, or how a mismatch was explained
    flip: Flip | None = None


def judge(
    index: int,
    outputs: list[np.ndarray],
    case: Case,
    atol: float = ATOL,
    rtol: float = RTOL,
    probe: tuple[list[np.ndarray], list[np.ndarray]] | None | str = None,
) -> Verdict:
    """Apply the rule to one check input.

    outputs: the timed model's outputs. probe: the probing instance's (outputs, sign
    inputs), or a string saying why the runtime cannot show them; only read on a mismatch."""
    err, scale, problem = max_abs_error(outputs, case.expected)
    if problem:
        return Verdict(False, err, f"case {index}: {problem}")
    tol = atol + rtol * scale
    if err <= tol:
        return Verdict(True, err)
    head = f"case {index}: max abs error {err:.3g} > {atol:g} + {rtol:g} * {scale:.3g}"
    if not case.signs:
        return Verdict(
            False,
            err,
            f"{head}; no reference sign decisions were sent, so a rounding flip cannot be told from an error",
        )
    if probe is None or isinstance(probe, str):
        why = probe or "the runtime cannot show the values its signs are taken of"
        for alt in case.alternatives or []:
            alt_err, alt_scale, trouble = max_abs_error(outputs, alt.expected)
            if not trouble and alt_err <= atol + rtol * alt_scale:
                alt_flip = Flip(alt.layer, 1, int(np.prod(case.signs[alt.layer].shape)), alt.margin, True)
                return Verdict(
                    True,
                    err,
                    f"{head}, explained by a rounding flip: torch (float64) with decision "
                    f"{alt.position} of binary layer {alt.layer} ({alt.margin:.1e} of its range) "
                    f"flipped reproduces the output to {alt_err:.2g} ({why})",
                    alt_flip,
                )
        tried = (
            f"; none of the {len(case.alternatives)} single flips nearest zero reproduces it"
            if case.alternatives
            else ""
        )
        return Verdict(
            False, err, f"{head}; {why}{tried}, so a rounding flip cannot be told from an export error"
        )
    probe_out, sign_values = probe
    same, _, trouble = max_abs_error(probe_out, outputs)
    if trouble or same > tol:
        return Verdict(
            False,
            err,
            f"{head}; the probing instance's output differs from the timed one's "
            f"({trouble or f'max abs difference {same:.3g}'}), so its sign inputs explain nothing",
        )
    flip = first_flip(sign_values, case.signs)
    if isinstance(flip, str):
        return Verdict(False, err, f"{head}; {flip}")
    if flip is None:
        return Verdict(
            False, err, f"{head}, with every sign decision as in the reference: the float ops disagree"
        )
    if flip.rounding:
        return Verdict(True, err, f"{head}, explained by a rounding flip at {flip.describe()}", flip)
    return Verdict(False, err, f"{head}; {flip.describe()}", flip)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    verdicts: list[Verdict]

    @property
    def errors(self) -> list[float]:
        return [v.error for v in self.verdicts]

    @property
    def reason(self) -> str:
        """Every failure first, then how the passing mismatches were explained."""
        failed = [v.reason for v in self.verdicts if not v.ok]
        explained = [v.reason for v in self.verdicts if v.ok and v.reason]
        return "; ".join(failed + explained)


def check(
    model,
    cases: list[Case],
    atol: float = ATOL,
    rtol: float = RTOL,
    probing=None,
    progress=None,
    alternatives=None,
) -> CheckResult:
    """Run every case on `model` (a LoadedModel) and judge it.

    probing: a callable returning a probing LoadedModel (one whose `sign_inputs()` works), or
    raising `runtimes.base.NoSignProbe`; called at most once, on the first mismatch that
    needs it. alternatives: on the host, a callable (case index -> list[Alternative]) that
    fills a case's alternatives when a mismatch needs them and none came with it.
    InvokeError propagates (an input the model cannot take is not a numerics question)."""
    from .runtimes.base import ModelLoadError, NoSignProbe, RuntimeNotInstalled

    probe_model, probe_why = None, ""
    verdicts = []
    try:
        for i, case in enumerate(cases):
            if progress:
                progress(i, len(cases))
            model.set_inputs(case.inputs)
            model.invoke()
            outputs = model.get_outputs()
            probe: tuple[list[np.ndarray], list[np.ndarray]] | str | None = None
            err, scale, problem = max_abs_error(outputs, case.expected)
            if not problem and err > atol + rtol * scale and case.signs:
                if probe_model is None and not probe_why:
                    try:
                        probe_model = probing() if probing else None
                        probe_why = (
                            "" if probe_model else "the runtime cannot show the values its signs are taken of"
                        )
                    except NoSignProbe as exc:
                        probe_why = str(exc)
                    except (ModelLoadError, RuntimeNotInstalled) as exc:
                        probe_why = f"its probing instance did not load ({exc})"
                if probe_model is not None:
                    probe_model.set_inputs(case.inputs)
                    probe_model.invoke()
                    probe = (probe_model.get_outputs(), probe_model.sign_inputs())
                else:
                    probe = probe_why
                    if case.alternatives is None and alternatives is not None:
                        case.alternatives = alternatives(i)
            verdicts.append(judge(i, outputs, case, atol, rtol, probe))
    finally:
        if probe_model is not None:
            probe_model.close()
    return CheckResult(all(v.ok for v in verdicts), verdicts)
