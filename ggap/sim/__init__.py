"""Deterministic cluster simulator for the Raft core (TigerBeetle VOPR style).

One seed derives the whole run: cluster size, timing, network and disk faults, crashes,
clients. The loop is single-threaded with simulated time only, so a failing seed replays
exactly: `python -m ggap.sim --seed N --log=short`. See DESIGN.md.
"""

from ggap.sim.config import PLANTED_BUGS, SimConfig
from ggap.sim.invariants import InvariantViolation
from ggap.sim.simulator import LivenessFailure, SimResult, Simulator, run_seed

__all__ = [
    "PLANTED_BUGS",
    "InvariantViolation",
    "LivenessFailure",
    "SimConfig",
    "SimResult",
    "Simulator",
    "run_seed",
]
