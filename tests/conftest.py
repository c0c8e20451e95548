"""Shared test setup: make the project's Python (lab/, module_utils/) importable."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("lab", "lab/standin", "module_utils", "library"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)
