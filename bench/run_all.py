"""Run every benchmark under bench/ in turn (`make bench`). Each prints its own ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    helpers = ("run_all.py", "__init__.py", "baseline.py")
    scripts = sorted(p for p in here.glob("*.py") if p.name not in helpers)
    failed = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        failed += subprocess.run([sys.executable, str(script)], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
