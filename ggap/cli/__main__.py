"""`python -m ggap.cli` (what tests and scripts use when the console script is not on PATH)."""

from ggap.cli import main

main()
