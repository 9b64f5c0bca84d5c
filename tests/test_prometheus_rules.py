"""The prometheus role's rules: promtool check + promtool test, and every rule covered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "roles" / "prometheus" / "files" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
# Debian's prometheus package (requirements/apt.txt) ships promtool.
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(),
    reason="promtool missing: `make setup` installs Debian's prometheus",
)


def rules() -> list[dict[str, object]]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
            for r in g["rules"]]


def test_rule_and_test_files_exist() -> None:
    assert RULE_FILES and TEST_FILES
    assert {r.get("alert") for r in rules()} >= {
        "MeshNodeDown", "MeshPartitioned", "MeshDestinationWithoutBackup", "MeshFailoverStorm",
        "MeshCertificateNearExpiry", "MeshScrapeFailing",
    }


@needs_promtool
def test_promtool_check_rules() -> None:
    res = subprocess.run([PROMTOOL, "check", "rules", *map(str, RULE_FILES)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout


@needs_promtool
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(test_file: Path) -> None:
    res = subprocess.run([PROMTOOL, "test", "rules", test_file.name], cwd=test_file.parent,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_rule_is_exercised() -> None:
    """Each recording rule is evaluated and each alert seen firing in some promtool test."""
    evaluated: set[str] = set()
    fired: set[str] = set()
    for f in TEST_FILES:
        for case in yaml.safe_load(f.read_text())["tests"]:
            evaluated |= {t["expr"] for t in case.get("promql_expr_test", [])}
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    records = {r["record"] for r in rules() if "record" in r}
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert records - evaluated == set(), "recording rules without a promql_expr_test"
    assert alerts - fired == set(), "alerts never expected to fire in a test"


def test_every_alert_has_severity_and_annotations() -> None:
    for r in rules():
        if "alert" in r:
            assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
            assert {"summary", "description"} <= set(r["annotations"]), r["alert"]
            assert "for" in r, r["alert"]
