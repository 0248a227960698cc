"""Client sessions: exactly-once writes (Raft dissertation §6.3). See DESIGN.md."""

from ggap.sessions.table import Admission, Admitted, Changes, SessionState, SessionTable

__all__ = ["Admission", "Admitted", "Changes", "SessionState", "SessionTable"]
