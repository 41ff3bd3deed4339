"""The numerics rule itself (biagent.numerics), on hand-made values: no torch, no runtime."""

from __future__ import annotations

import numpy as np
import pytest

from biagent.numerics import ROUNDING_MARGIN, Case, SignReference, check, first_flip, judge

PRE = np.array([[0.5, -2.0, 3e-7, -1.0], [4.0, -3e-6, 1.5, -0.25]])  # layer range 4.0
OUT = [np.array([[1.0, 2.0, 3.0]], dtype=np.float32)]


def case(signs=True) -> Case:
    return Case(
        [np.zeros((1, 4), np.float32)], [o.copy() for o in OUT], [SignReference.of(PRE)] if signs else []
    )


def flipped(*positions) -> np.ndarray:
    v = PRE.astype(np.float32).copy().reshape(-1)
    v[list(positions)] *= -1
    return v.reshape(PRE.shape)


def test_a_reference_lists_the_decisions_within_the_margin_of_zero():
    ref = SignReference.of(PRE)
    assert ref.fragile.tolist() == [2, 5]  # 3e-7/4 and 3e-6/4 are below 1e-5; nothing else is
    np.testing.assert_allclose(ref.margins, [3e-7 / 4, 3e-6 / 4])
    assert ref.decisions().tolist() == (PRE.reshape(-1) >= 0).tolist()
    again = SignReference.from_arrays(ref.as_arrays("s"), "s")
    assert again.shape == ref.shape and again.bits == ref.bits and again.fragile.tolist() == [2, 5]


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"s_bits": np.zeros(5, np.uint8)}, "needs 1 bytes"),
        ({"s_fragile": np.array([8])}, "out of range"),
        ({"s_margins": np.zeros(3)}, "without margins"),
    ],
)
def test_a_malformed_reference_is_refused(broken, message):
    arrays = SignReference.of(PRE).as_arrays("s") | broken
    with pytest.raises(ValueError, match=message):
        SignReference.from_arrays(arrays, "s")


def test_a_match_passes_without_looking_at_signs():
    v = judge(0, [OUT[0] + 1e-5], case(), probe="never read")
    assert v.ok and v.reason == "" and v.error == pytest.approx(1e-5, rel=1e-2)


def test_a_flip_at_rounding_distance_explains_a_mismatch():
    wrong = [OUT[0] + 0.5]
    v = judge(1, wrong, case(), probe=(wrong, [flipped(2, 5)]))
    assert v.ok and "explained by a rounding flip" in v.reason and "case 1" in v.reason
    assert v.flip.layer == 0 and v.flip.count == 2 and v.flip.margin == pytest.approx(3e-6 / 4)


def test_a_flip_with_a_real_margin_fails_and_names_it():
    wrong = [OUT[0] + 0.5]
    v = judge(0, wrong, case(), probe=(wrong, [flipped(2, 7)]))  # -0.25 of a range of 4: margin 0.0625
    assert not v.ok and "not rounding" in v.reason
    assert v.flip.margin == pytest.approx(0.0625)


def test_only_the_first_differing_layer_is_judged():
    """Flips after the first follow from it, whatever their margin."""
    two = Case(case().inputs, case().expected, [SignReference.of(PRE), SignReference.of(PRE)])
    wrong = [OUT[0] + 0.5]
    assert judge(0, wrong, two, probe=(wrong, [flipped(2), flipped(0, 1, 3)])).ok
    assert not judge(0, wrong, two, probe=(wrong, [PRE.astype(np.float32), flipped(1)])).ok


def test_a_mismatch_with_every_sign_as_in_the_reference_is_a_float_error():
    wrong = [OUT[0] + 0.5]
    v = judge(0, wrong, case(), probe=(wrong, [PRE.astype(np.float32)]))
    assert not v.ok and "the float ops disagree" in v.reason


def test_without_sign_inputs_a_mismatch_fails_and_says_why():
    wrong = [OUT[0] + 0.5]
    v = judge(0, wrong, case(), probe="larq cannot show the values its signs are taken of")
    assert not v.ok and "larq cannot show" in v.reason and "cannot be told from an export error" in v.reason
    assert "no reference sign decisions" in judge(0, wrong, case(signs=False)).reason


def test_the_probing_instance_must_compute_what_was_timed():
    v = judge(0, [OUT[0] + 0.5], case(), probe=([OUT[0] + 0.25], [flipped(2)]))
    assert not v.ok and "probing instance's output differs" in v.reason


def test_a_layer_count_or_shape_mismatch_is_not_excused():
    wrong = [OUT[0] + 0.5]
    assert "showed 2 sign inputs" in judge(0, wrong, case(), probe=(wrong, [PRE, PRE])).reason
    assert "has shape (3,)" in judge(0, wrong, case(), probe=(wrong, [np.zeros(3)])).reason


def test_a_nan_sign_input_is_minus_one_as_in_the_kernels():
    values = PRE.astype(np.float32).copy()
    values[0, 0] = np.nan  # +0.5 in the reference: a flip with no finite margin
    flip = first_flip([values], [SignReference.of(PRE)])
    assert not flip.rounding and np.isinf(flip.margin)


class Model:
    """A LoadedModel stand-in for check(): returns preset outputs, counts its loads."""

    def __init__(self, outputs, signs=None):
        self.outputs, self.signs, self.i = outputs, signs, -1

    def set_inputs(self, ins):
        self.i += 1

    def invoke(self):
        pass

    def get_outputs(self):
        return [self.outputs[self.i]]

    def sign_inputs(self):
        return [self.signs[self.i]]

    def close(self):
        pass


def test_every_case_must_pass_there_is_no_majority_vote():
    good, bad = OUT[0], OUT[0] + 0.5
    result = check(Model([good, good, bad]), [case(), case(), case(signs=False)])
    assert not result.ok and [v.ok for v in result.verdicts] == [True, True, False]
    assert result.reason.startswith("case 2: max abs error 0.5")


def test_the_probing_instance_is_loaded_once_and_only_on_a_mismatch():
    good, bad = OUT[0], OUT[0] + 0.5
    loads = []

    def probing():
        loads.append(1)
        return Model([bad, bad], [flipped(2), flipped(5)])

    assert check(Model([good, good]), [case(), case()], probing=probing).ok and not loads
    result = check(Model([bad, bad]), [case(), case()], probing=probing)
    assert result.ok and len(loads) == 1, result.reason
    assert result.reason.count("explained by a rounding flip") == 2
    assert ROUNDING_MARGIN == 1e-5  # documented in docs/numerics.md
