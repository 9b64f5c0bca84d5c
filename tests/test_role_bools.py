"""Every boolean role variable is read through ``| bool`` wherever an expression reads it.

An operator's ``-e base_sshd_password_authentication=false`` reaches the role as the
string "false". argument_specs accepts it (it converts to a bool) but does not change the
variable, and a string is truthy: ``{{ 'yes' if x else 'no' }}`` wrote
``PasswordAuthentication yes``, ``x | ternary(...)`` took the true branch, ``x | int`` of
"true" wrote 0 (IP forwarding off), a JSON config got the string "false", and a bare
``when: x`` failed the run (ansible-core 2.19 refuses a string conditional). Session 51
found the first of these in the agent's config template; this is the check for all roles.

The check is static: the bool options of every role's ``meta/argument_specs.yml``, and
every Jinja expression in the roles' tasks, handlers, vars and templates and in the
playbooks (conditionals such as ``when:`` and ``that:`` whole, and the ``{{ }}`` and
``{% %}`` spans of every other string). Each read of such a variable must be followed
by ``| bool``. One real run checks the sshd case end to end.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDITIONALS = {"when", "that", "changed_when", "failed_when", "until"}
SPAN = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
BOOL_AFTER = re.compile(r"(\s*\|\s*default\([^()]*\))?\s*\|\s*bool\b")
STRING = re.compile(r"'[^']*'|\"[^\"]*\"")


class _Loader(yaml.SafeLoader):
    """Ansible's YAML with its tags (``!unsafe``, ``!vault``) read as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node)
                              if isinstance(node, yaml.ScalarNode) else None)


def bool_options() -> dict[str, str]:
    """Every role's bool options, and the playbooks' variables whose default is a bool
    (a play's ``vars``, ``playbooks/vars/``): name -> where it is declared."""
    found: dict[str, str] = {}
    for spec in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        for entry in (yaml.safe_load(spec.read_text())["argument_specs"] or {}).values():
            for name, opt in (entry.get("options") or {}).items():
                if opt.get("type") == "bool":
                    found[name] = spec.parts[-3]
    for f in sorted(ROOT.glob("playbooks/*.yml")):
        for play in yaml.load(f.read_text(), Loader=_Loader) or []:
            found.update({k: f.name for k, v in (play.get("vars") or {}).items()
                          if isinstance(v, bool)})
    for f in sorted(ROOT.glob("playbooks/vars/*.yml")):
        found.update({k: f.name for k, v in (yaml.safe_load(f.read_text()) or {}).items()
                      if isinstance(v, bool)})
    return found


def _walk(node: Any, key: str | None = None) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    elif isinstance(node, str):
        if key in CONDITIONALS and "{{" not in node:
            yield node
        else:
            yield from (a or b for a, b in SPAN.findall(node))


def expressions() -> Iterator[tuple[str, str]]:
    """(file, expression) for every Jinja expression of the roles and playbooks."""
    files = [p for d in ("tasks", "handlers", "vars") for p in ROOT.glob(f"roles/*/{d}/**/*.yml")]
    files += list(ROOT.glob("playbooks/**/*.yml"))
    for f in sorted(files):
        for expr in _walk(yaml.load(f.read_text(), Loader=_Loader)):
            yield str(f.relative_to(ROOT)), expr
    for f in sorted(ROOT.glob("roles/*/templates/**/*.j2")):
        text = re.sub(r"\{#.*?#\}", "", f.read_text(), flags=re.S)
        for a, b in SPAN.findall(text):
            yield str(f.relative_to(ROOT)), a or b


def unfiltered(expr: str, names: dict[str, str]) -> list[str]:
    """The bool variables *expr* reads without ``| bool`` right after them (or after
    their ``| default(...)``)."""
    code = STRING.sub("''", expr)
    return [m.group(0) for m in re.finditer(r"(?<![\w.])[a-z_][a-z0-9_]*\b", code)
            if m.group(0) in names and not BOOL_AFTER.match(code[m.end():])]


def test_the_check_sees_what_it_must() -> None:
    names = {"x": "r", "y": "r"}
    assert unfiltered("'yes' if x else 'no'", names) == ["x"]
    assert unfiltered("x | ternary('a', 'b')", names) == ["x"]
    assert unfiltered("not x | bool and y|bool", names) == []
    assert unfiltered("'x' ~ hostvars.x ~ x_y", names) == []
    assert unfiltered("x | default(true) | bool and y | default(false)", names) == ["y"]
    assert list(_walk({"when": ["x", "y | bool"], "msg": "{{ x }} and x"})) == ["x", "y | bool",
                                                                            " x "]
    assert len(bool_options()) > 20


def test_every_bool_role_variable_is_read_through_the_bool_filter() -> None:
    names = bool_options()
    bad = sorted({f"{f}: {', '.join(found)} in: {expr.strip()}"
                  for f, expr in expressions() if (found := unfiltered(expr, names))})
    assert not bad, "read without | bool (a string from -e is truthy):\n" + "\n".join(bad)


@pytest.mark.parametrize("given, expected", [("false", "no"), ("no", "no"), ("true", "yes")])
def test_sshd_password_authentication_from_the_command_line(tmp_path: Path, given: str,
                                                            expected: str) -> None:
    """The role's real template, rendered by ansible-playbook with the value from -e."""
    play = tmp_path / "play.yml"
    play.write_text(f"""---
- name: Render
  hosts: localhost
  gather_facts: false
  vars_files:
    - {ROOT}/roles/base/defaults/main.yml
  tasks:
    - name: Render the sshd drop-in
      ansible.builtin.template:
        src: {ROOT}/roles/base/templates/sshd-meshcore.conf.j2
        dest: {tmp_path}/sshd.conf
        mode: "0644"
""")
    bin_dir = Path(sys.executable).parent
    res = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                          str(play), "-e", f"base_sshd_password_authentication={given}"],
                         capture_output=True, text=True, check=False,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin",
                              "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert res.returncode == 0, res.stdout + res.stderr
    conf = (tmp_path / "sshd.conf").read_text()
    assert f"PasswordAuthentication {expected}\n" in conf
    assert f"KbdInteractiveAuthentication {expected}\n" in conf
