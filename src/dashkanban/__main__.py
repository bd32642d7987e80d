"""`python -m dashkanban`."""

from dashkanban.cli import main

raise SystemExit(main())
