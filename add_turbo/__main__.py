"""`python -m add_turbo ...`: the entry point of the headless CLI (add_turbo.headless.cli), not part of the core."""

from .headless.cli import main

raise SystemExit(main())
