"""The gate language and the output path check (pure functions)."""
import pytest

from pipelines.checks import check_output_path, parse_gate
from core.errors import PortalError


def test_a_relative_gate_compares_with_the_served_value():
    gate = parse_gate("DTree Accuracy >= served - 0.01")
    assert (gate.metric, gate.op, gate.relative, gate.value) == ("DTree Accuracy", ">=", True, -0.01)
    assert gate.passes(0.895, 0.9) and not gate.passes(0.88, 0.9)
    assert gate.describe(0.9) == "DTree Accuracy >= served - 0.01 = 0.89"


def test_a_fixed_gate_compares_with_the_threshold():
    gate = parse_gate("loss < 0.25")
    assert not gate.relative and gate.passes(0.2, None) and not gate.passes(0.25, None)
    assert parse_gate("") is None and parse_gate(None) is None


@pytest.mark.parametrize("text", ["DTree Accuracy", ">= 0.5", "acc >= best", "acc >= served * 2", "acc >= nan", "acc => 1"])
def test_a_gate_that_does_not_parse_is_refused_naming_the_field(text):
    with pytest.raises(PortalError) as caught:
        parse_gate(text)
    assert caught.value.code == "invalid_gate" and "gate" in caught.value.fields


def test_output_paths_live_under_outputs():
    assert check_output_path("model.pkl") == "outputs/model.pkl"
    assert check_output_path("outputs/sub/model.pkl") == "outputs/sub/model.pkl"
    for bad in ("outputs/../secret", "outputs/", "/etc/passwd/..", "a//b"):
        with pytest.raises(PortalError):
            check_output_path(bad)
