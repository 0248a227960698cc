"""Run one fuzz target under atheris (coverage-guided), for a bounded time.

    python -m tests.fuzz.run TARGET [--seconds N] [libFuzzer flags...]

A crash is written by libFuzzer as ./crash-<sha1> (reproduce with
`python -m tests.fuzz.run TARGET crash-<sha1>`); pin it in
tests/unit/test_fuzz_regressions.py once fixed. The seed corpus is generated from valid
encodings, so the fuzzer starts from inputs that get deep into each decoder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ggap"]):
    from tests.fuzz import seeds, targets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", choices=sorted(targets.TARGETS))
    parser.add_argument("--seconds", type=int, default=60)
    args, rest = parser.parse_known_args()
    target = targets.TARGETS[args.target]
    corpus = Path(tempfile.mkdtemp(prefix=f"ggap-fuzz-{args.target}-"))
    for i, seed in enumerate(seeds.SEEDS[args.target]()):
        (corpus / f"seed{i}").write_bytes(seed)
    argv = [sys.argv[0], f"-max_total_time={args.seconds}", "-timeout=10", "-rss_limit_mb=2048", *rest]
    if not any(not a.startswith("-") for a in rest):
        argv.append(str(corpus))
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
