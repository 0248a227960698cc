"""bench.frontdoor runs its calls through the real front door (no timing is checked)."""

from __future__ import annotations

from click.testing import CliRunner

from bench.frontdoor import main, measure


def test_measure_answers_every_call() -> None:
    # measure() raises if the server side did not see every request of a round.
    assert measure(calls=96, in_flight=32) > 0


def test_command_prints_one_line_per_in_flight_setting() -> None:
    result = CliRunner().invoke(main, ["--calls", "64", "--in-flight", "1", "--in-flight", "16"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].strip().startswith("1 in flight") and "us per call" in lines[1]
