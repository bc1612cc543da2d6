"""trtopt.speedup_search: the step-up-then-bisect rule on known speedup curves (no timing), and its config.

The measured searches (pruning, low-rank, the CLI) are tested in tests/compress/test_prune.py,
tests/compress/test_lowrank.py and tests/cli/test_compress.py.
"""

from __future__ import annotations

import pytest

from trtopt.errors import TrtoptError
from trtopt.speedup_search import SpeedupSearchConfig, _step_up_then_bisect


def _strengths_tried(curve, **config):
    cfg = SpeedupSearchConfig(**config)
    tried = []

    def measure(strength):
        tried.append(round(strength, 4))
        return curve(strength)

    _step_up_then_bisect(measure, cfg, *cfg.window)
    return tried


def test_steps_up_until_the_speedup_enters_the_window():
    # window 1.35..1.65: 0.1 → 1.2 (below), 0.2 → 1.4 (inside): stop
    assert _strengths_tried(lambda s: 1 + 2 * s, target_speedup=1.5) == [0.1, 0.2]


def test_an_overshoot_is_bisected_between_the_last_two_strengths():
    # 0.1 → 2.0 overshoots 1.65; bisect between 0 and 0.1: 0.05 → 1.5 is inside
    assert _strengths_tried(lambda s: 1 + 10 * s, target_speedup=1.5) == [0.1, 0.05]
    # a jump the window never catches: bisect_steps halvings toward it, then stop
    assert _strengths_tried(lambda s: 3.0 if s >= 0.3 else 1.1, target_speedup=1.5, bisect_steps=3) == [
        0.1, 0.2, 0.3, 0.25, 0.275, 0.2875]


def test_an_unreachable_target_tries_every_step_up_to_max_strength():
    assert _strengths_tried(lambda s: 1 + 0.1 * s, target_speedup=2.0, strength_step=0.2, max_strength=0.9) == [
        0.2, 0.4, 0.6, 0.8]


@pytest.mark.parametrize("fields, needle", [({"target_speedup": 1.0}, "target_speedup=1.0 must be a number > 1"),
                                            ({"tolerance": 1.0}, "tolerance=1.0 must be a number in (0, 1)"),
                                            ({"strength_step": 0.0}, "strength_step=0.0"), ({"max_strength": 1.0}, "max_strength=1.0"),
                                            ({"batch_size": 0}, "batch_size=0 must be a positive integer")])
def test_bad_settings_are_named(fields, needle):
    with pytest.raises(TrtoptError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        SpeedupSearchConfig(**fields)
