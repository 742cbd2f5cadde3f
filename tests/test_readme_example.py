"""The README's Python example runs as copied, in a folder laid out as `make demo` leaves it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    runtime = REPO.joinpath("README.md").read_text().split("## The runtime", 1)[1]
    return re.search(r"```python\n(.*?)```", runtime, re.S).group(1)


def test_readme_python_example_runs(tmp_path: Path, speech_16k: np.ndarray, tiny_package: Path) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "tiny-package").symlink_to(tiny_package)
    sf.write(demo / "question.wav", speech_16k, 16000)
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer, rate = sf.read(tmp_path / "answer.wav")
    assert rate == 24000 and answer.size > 0 and np.abs(answer).max() > 0
    assert "device profile: " in done.stdout  # auto said which profile it chose
