"""Table tests of the conditions policy: what each transition sets, and when lastTransitionTime moves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from controller.api.constants import Condition
from controller.core.policy import conditions
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW

LATER = NOW + timedelta(minutes=5)


def by_type(conds: conditions.Conditions) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["lastTransitionTime"]) for c in conds}


def test_transition_time_moves_only_with_the_status() -> None:
    first = conditions.set_condition((), Condition.RUNNING, True, "A", "", NOW)
    same = conditions.set_condition(first, Condition.RUNNING, True, "B", "other", LATER)
    flipped = conditions.set_condition(same, Condition.RUNNING, False, "C", "", LATER)
    assert by_type(first)["Running"] == ("True", "A", format_time(NOW))
    assert by_type(same)["Running"] == ("True", "B", format_time(NOW))
    assert by_type(flipped)["Running"] == ("False", "C", format_time(LATER))
    assert len(flipped) == 1


@pytest.mark.parametrize(
    ("transition", "expected"),
    [
        (
            lambda c: conditions.running(c, 3, NOW),
            {"Running": ("True", "AllWorkersRunning"), "Restarting": ("False", "AllWorkersRunning")},
        ),
        (
            lambda c: conditions.restarting(c, "NodeLost", "gone", NOW),
            {"Running": ("False", "NodeLost"), "Restarting": ("True", "NodeLost")},
        ),
        (
            lambda c: conditions.succeeded(c, 2, NOW),
            {"Running": ("False", "Succeeded"), "Succeeded": ("True", "AllWorkersSucceeded")},
        ),
        (
            lambda c: conditions.failed(c, "RestartBudgetExceeded", "m", NOW),
            {"Running": ("False", "RestartBudgetExceeded"), "Failed": ("True", "RestartBudgetExceeded")},
        ),
        (lambda c: conditions.invalid(c, "bad", NOW), {"Failed": ("True", "InvalidSpec")}),
    ],
)
def test_each_transition_sets_its_conditions(
    transition: Callable[[conditions.Conditions], conditions.Conditions], expected: dict[str, tuple[str, str]]
) -> None:
    got = {t: v[:2] for t, v in by_type(transition(())).items()}
    assert got == expected
