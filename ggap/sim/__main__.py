"""`python -m ggap.sim`: run one seed, or sweep many; exit 1 on the first failure.

python -m ggap.sim --seed 42                   # one run, prints its configuration
python -m ggap.sim --seed 42 --log=short       # ... with a per-event trace
python -m ggap.sim --seeds 200 [--start 0]     # CI sweep
python -m ggap.sim --seeds 20 --plant-bug stale-read   # prove the checks can fail
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from ggap.sim.config import DEFAULT_TICKS, PLANTED_BUGS, SimConfig
from ggap.sim.simulator import SimResult, Simulator

TAIL = 40  # trace lines shown when a single run fails without --log=short


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ggap.sim", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run this one seed (default: a random one)")
    which.add_argument("--seeds", type=int, metavar="K", help="sweep K seeds from --start")
    p.add_argument("--start", type=int, default=0, help="first seed of a sweep (default 0)")
    p.add_argument("--ticks", type=int, help=f"safety-phase length in ticks (default {DEFAULT_TICKS})")
    p.add_argument("--nodes", type=int, choices=(1, 3, 5, 7), help="cluster size (default: from the seed)")
    p.add_argument("--log", choices=("none", "short"), default="none", help="per-event trace on stdout")
    p.add_argument("--plant-bug", choices=PLANTED_BUGS, help="break the driver on purpose")
    return p


def _failure_report(res: SimResult) -> str:
    return (
        f"FAILED seed {res.seed}: {res.failure} (phase {res.phase}, step {res.step}, t={res.now_ms}ms)\n"
        f"{res.detail}\n"
        f"replay: {res.replay}"
    )


def _summary(res: SimResult) -> str:
    s = res.stats
    return (
        f"seed {res.seed:<6} {'ok  ' if res.ok else 'FAIL'} steps={s['steps']:<6} "
        f"sim={s['sim_ms'] / 1000:5.1f}s "
        f"terms={s['max_term']:<3} commit={s['committed']:<4} crashes={s['crashes']:<2} ops={s['ops']:<4} "
        f"unknown={s['ops_unknown']:<3} digest={res.digest} wall={res.wall_s:.2f}s"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = {"nodes": args.nodes, "ticks": args.ticks, "plant_bug": args.plant_bug}
    if args.seeds is not None:
        started = time.perf_counter()
        for seed in range(args.start, args.start + args.seeds):
            res = Simulator(SimConfig.from_seed(seed, **opts)).run()
            print(_summary(res), flush=True)
            if not res.ok:
                print(_failure_report(res), flush=True)
                return 1
        print(f"{args.seeds} seeds passed in {time.perf_counter() - started:.1f}s", flush=True)
        return 0

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    cfg = SimConfig.from_seed(seed, **opts)
    print(f"seed {seed}, configuration:\n{cfg.describe()}", flush=True)
    short = args.log == "short"
    sim = Simulator(cfg, log=sys.stdout if short else None, tail=0 if short else TAIL)
    res = sim.run()
    print(_summary(res))
    print("stats: " + " ".join(f"{k}={v}" for k, v in res.stats.items()))
    if res.trace_hash:
        print(f"trace hash: {res.trace_hash}")
    if not res.ok:
        if sim.tail:
            print(f"last {len(sim.tail)} events:")
            print("\n".join(sim.tail))
        print(_failure_report(res))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
