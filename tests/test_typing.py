"""The public Python API type-checks: `mypy` with pyproject.toml's [tool.mypy] (strict, on vitkit/api.py; the
modules it imports are followed silently, so their annotations are used but their own errors are not reported).

Run:  .venv/bin/python -m pytest tests/test_typing.py -q      (or: .venv/bin/mypy, from the project root)
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_python_api_type_checks_strictly(request, tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (it is in the test extra: pip install -e '.[test]')")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True and "vitkit/api.py" in config["files"], config
    cache = getattr(request.config, "cache", None)  # pytest's cache folder: warm runs take a second
    cache = cache.mkdir("mypy") if cache else tmp_path
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "Success: no issues found" in result.stdout, result.stdout + result.stderr
