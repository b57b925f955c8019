"""`python -m benchmarks.load`: see benchmarks/load/cli.py."""

from benchmarks.load.cli import main

raise SystemExit(main())
