"""Reading the project's JSON and TOML files: the data, or one line naming the file, the problem and the fix.

Configs, manifests, device profiles, recipes and reports are all read through here, so a corrupt or
missing file reads the same everywhere and never ends in a traceback.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any


def read_document(path: str | Path, error: type[Exception], fix: str, missing: str = "no such file",
                  kind: str | None = None) -> Any:
    """``kind`` "JSON" or "TOML" (default: TOML when the name ends in ``.toml``) -> the data;
    ``error(line)`` when the file is missing or does not parse."""
    path = Path(path)
    kind = kind or ("TOML" if path.suffix == ".toml" else "JSON")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}; {fix}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); {fix}") from None
    try:
        return tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
