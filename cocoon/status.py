"""A node's state, written atomically to a small JSON file that ``cocoon up`` watches.

Carries no request content: only the phase, progress counters and listening addresses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_status(path: str, state: str, **fields: Any) -> None:
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), **fields}))
    tmp.replace(target)


def read_status(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
