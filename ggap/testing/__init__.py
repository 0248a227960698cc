"""Test-support code shipped with the package (used by the simulator and the chaos tests)."""

from ggap.testing.lincheck import CheckResult, HistoryRecorder, Operation, OpKind, check

__all__ = ["CheckResult", "HistoryRecorder", "OpKind", "Operation", "check"]
