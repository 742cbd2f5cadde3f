"""tools/session_memory.py (the per-graph session memory table of docs/real-scale.md) on the tiny package."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "session_memory.py"


def _tool():
    spec = importlib.util.spec_from_file_location("session_memory", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_graph_opened_alone_with_its_file_size_and_memory(tiny_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    assert _tool().main([str(tiny_package), "--graphs", "llm,vocoder", "--config", "session.disable_prepacking=1",
                         "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"] == {"session.disable_prepacking": "1"}
    manifest = json.loads((tiny_package / "manifest.json").read_text())
    for row in report["rows"]:
        files = manifest["graphs"][row["graph"]]["sha256"]
        assert row["file"] == sum((tiny_package / f).stat().st_size for f in files)
        assert 0 < row["rss"] <= row["peak"] and row["open_s"] > 0
        assert 0 < row["anon"] <= row["rss"]  # inline tiny graphs: parsed and copied, so anonymous
    assert [r["graph"] for r in report["rows"]] == ["llm", "vocoder"]


def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _tool().main([str(tmp_path)])
    assert exc.value.code == 2 and "no manifest.json" in capsys.readouterr().err
