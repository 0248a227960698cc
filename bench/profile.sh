#!/bin/sh
# Profile a local ggap cluster under load with py-spy (a thin wrapper of bench/profile.py).
#   bench/profile.sh --duration 10 --rate 200 --clients 64 --mix put=100 --processes 2
# Results: bench/results/profile-<UTC timestamp>/node<N>.txt (collapsed stacks), load.txt;
# the top-30 self-time functions per node are printed. PYTHON overrides the interpreter.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-"$root/.venv/bin/python"}
[ -x "$py" ] || py=python3
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m bench.profile "$@"
