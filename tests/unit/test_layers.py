"""The architecture as a test: import-linter contracts (layers, plugin independence, shells-only UI libraries)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed in the test environment")
    result = subprocess.run([exe, str(ROOT / "pyproject.toml")], cwd=ROOT / "src",
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


@pytest.mark.parametrize(("module", "source", "contract"), [
    # a plugin added later is covered without editing the contract
    ("plugins/newcomer/__init__.py", "from op_dbus.plugins import net\n", "Plugins do not import each other"),
    ("state.py", "from op_dbus import engine\n", "Layers: shells over engine"),
    ("errors.py", "from op_dbus import ledger\n", "The model imports nothing above it"),
    ("engine/newcomer.py", "from op_dbus.backends import netlink\n", "The engine reaches the backends only"),
    ("cli/newcomer.py", "from op_dbus.backends import ovsdb\n", "The shells reach plugins and backends only"),
    ("ledger/newcomer.py", "from op_dbus import engine\n", "The ledger knows nothing of the stack"),
])  # fmt: skip
def test_a_contract_breaks_when_its_rule_is_broken(tmp_path: Path, module: str, source: str, contract: str) -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed in the test environment")
    shutil.copytree(ROOT / "src" / "op_dbus", tmp_path / "op_dbus", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "op_dbus" / module
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as f:
        f.write("\n" + source)
    result = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                            capture_output=True, text=True, check=False, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0, result.stdout + result.stderr
    # the summary wraps long names: read it as one line, each contract's name followed by its verdict
    summary = " ".join(result.stdout.split())
    at = summary.index(contract)
    verdicts = [v for v in (summary.find(" KEPT", at), summary.find(" BROKEN", at)) if v >= 0]
    assert summary.startswith(" BROKEN", min(verdicts)), result.stdout
