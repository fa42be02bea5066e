"""How results read: whether the machine was busy when a run began, and ratios with enough digits."""

from __future__ import annotations

from bench.__main__ import machine_note


def test_a_busy_machine_is_called_busy_and_an_idle_one_idle() -> None:
    assert "busy" in machine_note(3.2, 2)
    assert "3.2 on 2 cores" in machine_note(3.2, 2)
    assert "idle" in machine_note(0.3, 2)
    assert "busy" in machine_note(1.0, 2)  # half the cores taken already skews a two-core machine


def test_ratios_show_enough_digits_to_see_why_a_target_was_missed() -> None:
    from bench.results import Figure

    assert Figure("r", 1.0034, "×", "≤ 1.00", False).formatted() == "1.003 ×"
    assert Figure("r", 0.0415, "×").formatted() == "0.0415 ×"
    assert Figure("t", 1.0034, "ms").formatted() == "1.00 ms"
