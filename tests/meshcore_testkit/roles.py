"""Render a role's templates the way Ansible does, without Ansible: for template tests.

Only Ansible's own filters that the templates use are loaded (``comment``,
``to_json``...), and the role's defaults that are themselves templates are
resolved lazily, as Ansible resolves them.
"""

from __future__ import annotations

from typing import Any

import jinja2
import jinja2.meta
import jinja2.nativetypes
import yaml
from ansible.plugins.filter.core import FilterModule
from meshcore_tools import ROOT


def defaults(role: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml")
                                          .read_text())
    return data


def render(role: str, template: str, **overrides: Any) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             extensions=["jinja2.ext.do"])
    # Variables resolve to native values, as Ansible's templating gives them (a
    # default of "{{ [a] + b }}" is a list, not its text).
    native = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)
    ansible_filters = FilterModule().filters()
    # Only the filters the templates use; Ansible's default/map/select expect its own Undefined.
    for e in (env, native):
        e.filters.update({k: ansible_filters[k] for k in ("bool", "comment", "to_json",
                                                           "to_nice_json", "combine", "dirname")})
    variables: dict[str, Any] = {"ansible_managed": "Ansible managed", "inventory_hostname": "n1",
                                 "groups": {}, "hostvars": {},
                                 "ansible_playbook_python": "/usr/bin/python3"}
    variables.update(defaults(role))
    variables.update(overrides)
    # Resolve the defaults that are themselves templates, as Ansible does lazily
    # (each once: a {% raw %} value must stay literal after it).
    pending = {k for k, v in variables.items() if isinstance(v, str) and "{" in v}
    for _ in range(5):
        for key in sorted(pending):
            # A value that reads another still-unresolved template waits for it (its text
            # is not its value: "{{ x | default('') }}" is not empty).
            if jinja2.meta.find_undeclared_variables(native.parse(variables[key])) & (
                    pending - {key}):
                continue
            try:
                variables[key] = native.from_string(variables[key]).render(
                    **variables, ansible_facts={"architecture": "aarch64"})
            except jinja2.UndefinedError:
                continue
            pending.discard(key)
    source = (ROOT / "roles" / role / "templates" / template).read_text()
    return env.from_string(source).render(**variables)
