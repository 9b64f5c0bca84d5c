"""The README stays a user's document: every make target in `make help` and in its
reference, no line too long to read, no link out of the repository, no dead link."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.M))


def test_every_target_is_in_make_help_and_the_readme() -> None:
    targets = make_targets()
    assert {"lab", "molecule-image", "agent-bundle", "help"} <= targets
    help_text = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    helped = set(re.findall(r"make ([a-z][a-z0-9-]*)", help_text))
    helped |= {t for line in help_text.splitlines() if line.startswith("make ")
               for t in re.findall(r"\| ([a-z][a-z0-9-]*)", line)}
    assert targets - {"help"} - helped == set(), "targets missing from make help"
    readme = README.read_text()
    documented = set(re.findall(r"^\| `make ([a-z][a-z0-9-]*)", readme, re.M))
    assert targets - documented == set(), "targets missing from the README's reference"
    assert documented - targets == set(), "the README documents targets that do not exist"


def test_readme_lines_are_readable_and_carry_no_run_history() -> None:
    lines = README.read_text().splitlines()
    long = [i + 1 for i, line in enumerate(lines) if len(line) > 200]
    assert long == [], f"README lines over 200 characters: {long}"
    history = [i + 1 for i, line in enumerate(lines)
               if re.search(r"this session|previous session", line, re.I)]
    assert history == [], f"run history in the README (docs/lab-notebook.md): {history}"


def test_links_stay_in_the_repository_and_resolve() -> None:
    bad = []
    for doc in [README, *DOCS]:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://")):
                if doc == README:
                    bad.append(f"{doc.name}: {target} points outside the repository")
                continue
            path, _, _anchor = target.partition("#")
            if not path:
                continue
            resolved = (doc.parent / path).resolve()
            if not resolved.is_relative_to(ROOT):
                bad.append(f"{doc.relative_to(ROOT)}: {target} points outside the repository")
            elif not resolved.exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target} does not exist")
    assert bad == []


def test_readme_anchors_exist() -> None:
    text = README.read_text()
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
             for h in re.findall(r"^#+ (.+)$", text, re.M)}
    missing = [a for a in re.findall(r"\]\(#([^)]+)\)", text) if a not in slugs]
    assert missing == []
