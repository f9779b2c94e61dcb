"""`python -m mxpress.cli` (what `mxpress` runs)."""

from mxpress.cli import main

main()
