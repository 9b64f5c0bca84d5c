"""The site config: one file per site that the image, make seed and site.yml all read.

Each inconsistency issue 14 found on the operator's path has a test here that
would have caught it:

* make seed failed with the default inventory (SPIRE), had no login user, no
  mesh address and no radio settings: `make seed` runs for every shipped
  inventory and every identity source into a fake card, and the card's seed is
  read back;
* trust domains differed between roles: every role variable naming a trust
  domain is derived from site.identity.trust_domain;
* the image carried the roles' radio defaults: the image's roles stage is the
  mesh node's one role list with the site's role variables;
* three copies of the mesh node's roles: there is one list, imported by all;
* bad input: a missing or contradicting value fails before any task runs,
  naming it; a seed for a host not in the inventory fails clearly; a failed
  seed leaves no half-written card image.

The ansible-playbook runs touch no host (the checks run on the controller; the
seeds go into small FAT disk images made here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshcore_testkit.loader import load_path

ROOT = Path(__file__).resolve().parents[1]
# The filter plugin is a file Ansible loads by path; so does this test.
meshcore_site = load_path("meshcore_site", ROOT / "plugins/filter/meshcore_site.py")
site_conflicts, site_errors = meshcore_site.site_conflicts, meshcore_site.site_errors
site_key, time_sources = meshcore_site.site_key, meshcore_site.time_sources
spire_archives_missing = meshcore_site.spire_archives_missing

PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
SHIPPED = ["starter", "example", "lab"]


def _site(name: str, groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A shipped site config, its templated values rendered as Ansible would (plain Jinja)."""
    import jinja2

    site = yaml.safe_load((ROOT / "inventories" / name / "group_vars/all/site.yml").read_text())[
        "site"
    ]

    def render(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v) for v in value]
        if isinstance(value, str) and "{{" in value:
            return (
                jinja2.Environment()
                .from_string(value)
                .render(groups=groups or {}, playbook_dir="playbooks")
            )
        return value

    return render(site)


def _inventory(name: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """hostvars and groups of a shipped inventory (the lab's hosts are generated: a stand-in)."""
    if name == "lab":
        hosts = {f"node{i:02d}": {"mesh_node_address": f"10.77.0.{i}"} for i in range(1, 5)}
        groups = {"mesh_nodes": sorted(hosts), "monitor": ["monitor01"]}
        hosts["monitor01"] = {}
    else:
        data = yaml.safe_load((ROOT / "inventories" / name / "hosts.yml").read_text())["all"][
            "children"
        ]
        hosts, groups = {}, {}
        for group, body in data.items():
            members = body.get("hosts") or {}
            groups[group] = sorted(members)
            for host, hv in members.items():
                hosts.setdefault(host, {}).update(hv or {})
    groups["all"] = sorted(hosts)
    return hosts, groups


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_site_configs_are_valid(name):
    hostvars, groups = _inventory(name)
    assert site_errors(_site(name, groups), hostvars, groups) == []


def _bad(mutate) -> list[str]:
    site = json.loads(json.dumps(_site("starter")))
    hostvars, groups = _inventory("starter")
    mutate(site, hostvars, groups)
    return site_errors(site, hostvars, groups)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s, h, g: s["mesh"].pop("radio"), "site.mesh.radio: required, wlan0 is wireless"),
        (lambda s, h, g: s["mesh"]["radio"].update(frequency=2500), "site.mesh.radio.frequency"),
        (lambda s, h, g: s["mesh"]["radio"].update(country="de"), "site.mesh.radio.country"),
        (lambda s, h, g: s["mesh"].update(backend="batman"), "site.mesh.batman: required"),
        (lambda s, h, g: s["mesh"].update(interfaces=[]), "site.mesh.interfaces: empty"),
        (
            lambda s, h, g: h["starter-02"].update(mesh_node_address="10.78.0.2"),
            "starter-02: mesh_node_address 10.78.0.2 is not a host address of site.addresses",
        ),
        (
            lambda s, h, g: h["starter-02"].update(mesh_node_address="10.77.0.1"),
            "starter-02: mesh_node_address 10.77.0.1 is also starter-01's",
        ),
        (
            lambda s, h, g: h["starter-03"].pop("mesh_node_address"),
            "starter-03: mesh_node_address is not set",
        ),
        (
            lambda s, h, g: s["identity"].update(trust_domain="spiffe://x"),
            "site.identity.trust_domain",
        ),
        (
            lambda s, h, g: s["identity"].update(source="spire"),
            "site.identity.spire_attestor: required",
        ),
        (lambda s, h, g: s["time"].update(servers=["no such host!"]), "site.time.servers"),
        (
            lambda s, h, g: s["time"].update(servers=["site-01"]),  # a renamed host's old name
            "site.time.servers: 'site-01' is not an inventory host (renamed?)",
        ),
        (lambda s, h, g: s["monitoring"].update(host="starter-01"), "site.monitoring.host"),
        (
            lambda s, h, g: s["monitoring"].update(scrape_interval="30"),
            "site.monitoring.scrape_interval",
        ),
        (
            lambda s, h, g: s["addresses"].update(mesh_prefix="10.77.0.1/16"),
            "site.addresses.mesh_prefix",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_cross_field_rules_name_the_value(mutate, needle):
    errors = _bad(mutate)
    assert any(needle in e for e in errors), errors


def test_conflicts_and_time_sources():
    derived = {"mesh_agent_trust_domain": "a.example", "lab_pki_trust_domain": "a.example"}
    assert site_conflicts(derived, {"lab_pki_trust_domain": "a.example"}, "n1") == []
    (msg,) = site_conflicts(derived, {"mesh_agent_trust_domain": "mesh.lab"}, "n1")
    assert "mesh_agent_trust_domain" in msg and "'mesh.lab'" in msg and "'a.example'" in msg
    hostvars, groups = _inventory("starter")
    assert time_sources(["starter-01"], hostvars, groups, "starter-02") == ["10.77.0.1"]
    assert time_sources(["starter-01"], hostvars, groups, "starter-01") == []  # never itself
    assert time_sources(["pool.example.org"], hostvars, groups, "starter-02") == [
        "pool.example.org"
    ]


def test_site_key_follows_group_vars(tmp_path):
    shutil.copytree(ROOT / "inventories/starter", tmp_path / "inv")
    before = site_key(str(tmp_path / "inv"))
    assert before == site_key(str(ROOT / "inventories/starter"))
    (tmp_path / "inv/hosts.yml").write_text("# a node more changes no image\n")
    assert site_key(str(tmp_path / "inv")) == before
    site = tmp_path / "inv/group_vars/all/site.yml"
    site.write_text(site.read_text().replace("frequency: 2437", "frequency: 2412"))
    assert site_key(str(tmp_path / "inv")) != before


# -- one owner per fact --------------------------------------------------------------
def _role_vars() -> dict[str, str]:
    return yaml.safe_load((ROOT / "playbooks/site-config/role-vars.yml").read_text())


def test_every_trust_domain_variable_comes_from_the_site_config():
    """A role that grows its own *_trust_domain must be derived from the site too."""
    names = set()
    for spec in (ROOT / "roles").glob("*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            names |= {n for n in entry.get("options", {}) if n.endswith("_trust_domain")}
    assert names == {
        "mesh_agent_trust_domain",
        "lab_pki_trust_domain",
        "spire_server_trust_domain",
        "spire_agent_trust_domain",
    }
    derived = _role_vars()
    for name in names:
        assert derived[name] == "{{ site.identity.trust_domain }}", name


def test_radio_and_backend_come_from_the_site_config():
    derived = _role_vars()
    assert derived["mesh_link_radio"] == "{{ site.mesh.radio | default({}) }}"
    assert (
        derived["mesh_link_backend"]
        == derived["mesh_agent_link_backend"]
        == "{{ site.mesh.backend }}"
    )
    wpa = (ROOT / "roles/mesh_link/templates/wpa_supplicant.conf.j2").read_text()
    assert "mesh_link_radio.ssid" in wpa and "mesh_link_radio.frequency" in wpa
    assert not list((ROOT / "roles/batman_adv/templates").glob("wpa_supplicant*"))
    # No inventory sets a derived variable itself.
    for inv in SHIPPED:
        for f in (ROOT / "inventories" / inv / "group_vars").rglob("*.yml"):
            overlap = set(yaml.safe_load(f.read_text()) or {}) & set(derived)
            assert not overlap, f"{f}: {overlap}"


def _imports(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [
        (p["ansible.builtin.import_playbook"], p.get("vars", {}))
        for p in yaml.safe_load(path.read_text())
        if "ansible.builtin.import_playbook" in p
    ]


def test_one_list_of_a_mesh_nodes_roles():
    """site.yml, the image's two chroot stages and molecule/image all import
    playbooks/mesh-node.yml; no other play lists a mesh node's roles."""
    assert ("mesh-node.yml", {}) in _imports(ROOT / "playbooks/site.yml")
    stages = [
        v.get("mesh_node_stage")
        for p, v in _imports(ROOT / "playbooks/image.yml")
        if p == "mesh-node.yml"
    ]
    assert stages == ["system", "agent"]
    (converge,) = _imports(ROOT / "molecule/image/converge.yml")
    assert converge[0] == "../../playbooks/mesh-node.yml"
    for play_file in (ROOT / "playbooks").glob("*.yml"):
        for play in yaml.safe_load(play_file.read_text()):
            roles = {r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])}
            if {"mesh_agent", "mesh_link"} & roles:
                assert play_file.name == "mesh-node.yml", play_file


# -- the check play and make seed, for real (no host is touched) ---------------------------
def _ansible(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    return subprocess.run(
        [str(PLAYBOOK), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _errors(proc: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(
        re.findall(
            r"^\[ERROR\]: (.*?)^Origin:", proc.stdout + proc.stderr, flags=re.MULTILINE | re.DOTALL
        )
    )


def _copy(name: str, tmp_path: Path) -> Path:
    inv = tmp_path / name
    shutil.copytree(ROOT / "inventories" / name, inv)
    return inv


def _set_site(inv: Path, **changes: Any) -> None:
    f = inv / "group_vars/all/site.yml"
    data = yaml.safe_load(f.read_text())
    for path, value in changes.items():
        node = data["site"]
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    f.write_text(yaml.safe_dump(data))


def test_a_missing_site_value_fails_before_any_task_naming_it(tmp_path):
    inv = _copy("starter", tmp_path)
    _set_site(inv, time=None)
    proc = _ansible("-i", str(inv), "playbooks/site.yml")
    assert proc.returncode != 0
    assert "missing required arguments: time found in site" in _errors(proc)
    tasks = re.findall(r"^TASK \[(.+?)\]", proc.stdout, flags=re.MULTILINE)
    assert tasks == ["Check the site config against its spec (playbooks/site-config/spec.yml)"]


def test_a_contradicting_role_variable_fails_naming_it(tmp_path):
    inv = _copy("starter", tmp_path)
    (inv / "group_vars/all/main.yml").write_text(
        (inv / "group_vars/all/main.yml").read_text() + "mesh_agent_trust_domain: mesh.lab\n"
    )
    proc = _ansible("-i", str(inv), "playbooks/site.yml")
    assert proc.returncode != 0
    err = _errors(proc)
    assert "mesh_agent_trust_domain is 'mesh.lab' in the inventory" in err
    assert "'starter.mesh.example'" in err
    proc = _ansible(
        "-i",
        str(ROOT / "inventories/starter"),
        "playbooks/site.yml",
        "-e",
        "lab_pki_trust_domain=x.y",
    )
    assert "lab_pki_trust_domain is 'x.y'" in _errors(proc)


def _fake_card(path: Path, label: str = "CIDATA") -> int:
    """A 48 MiB disk image with a FAT32 boot partition at 1 MiB, like the real layout."""
    subprocess.run(["truncate", "-s", "48M", str(path)], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(path)],
        input="label: dos\nstart=2048, size=81920, type=c\n",
        text=True,
        check=True,
    )
    part = path.with_suffix(".vfat")
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-n", label, "-C", str(part), "40960"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["dd", f"if={part}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc", "status=none"],
        check=True,
    )
    part.unlink()
    return 2048 * 512


def _needs_tools() -> None:
    missing = [t for t in ("sfdisk", "mkfs.vfat", "mcopy", "ssh-keygen") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (requirements/apt.txt, make setup)")


@pytest.fixture
def operator_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "op@example", "-f", str(key)],
        check=True,
    )
    return key.with_suffix(".pub")


def _seed(inv: Path, host: str, tmp_path: Path, key: Path | None, *extra: str):
    card = tmp_path / f"{host}-card.img"
    offset = _fake_card(card)
    args = [
        "-i",
        str(inv),
        "playbooks/flash.yml",
        "-e",
        f"flash_hosts={host}",
        "-e",
        f"flash_device={card}",
        "-e",
        f"flash_out_dir={tmp_path}/flash",
        *extra,
    ]
    if key is not None:
        args += ["-e", f"flash_ssh_key_file={key}"]
    proc = _ansible(*args)

    def read(name: str) -> str:
        return subprocess.run(
            ["mtype", "-i", f"{card}@@{offset}", f"::/{name}"],
            env=MTOOLS_ENV,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    return proc, read


def _files(read) -> dict[str, dict[str, Any]]:
    user_data = yaml.safe_load(read("user-data"))
    return {f["path"]: f for f in user_data["write_files"]}


def test_seed_starter_lab_pki(tmp_path, operator_key):
    """The default inventory: a login user, the site CA's certificate, the mesh
    address on the links, the time sources, an agent config the agent accepts."""
    _needs_tools()
    inv = _copy("starter", tmp_path)
    proc, read = _seed(inv, "starter-02", tmp_path, operator_key)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    user_data = yaml.safe_load(read("user-data"))
    assert user_data["hostname"] == "starter-02"
    # /etc/hosts: the base role's own 127.0.1.1 line, appended once (cloud-init's hosts
    # template rewrote it at every boot, so site.yml changed it after every reboot).
    assert user_data["manage_etc_hosts"] is False
    base = yaml.safe_load((ROOT / "roles/base/tasks/hostname.yml").read_text())
    line = next(
        t["ansible.builtin.lineinfile"]["line"]
        for t in base
        if t.get("ansible.builtin.lineinfile", {}).get("path") == "/etc/hosts"
    )
    hosts = [f for f in user_data["write_files"] if f["path"] == "/etc/hosts"]
    assert hosts == [
        {
            "path": "/etc/hosts",
            "append": True,
            "content": line.replace("{{ base_hostname }}", "starter-02") + "\n",
        }
    ]
    assert user_data["users"][0]["ssh_authorized_keys"][0].endswith("op@example")
    files = _files(read)
    assert (
        "Address=10.77.0.2/16"
        in files["/etc/systemd/network/40-meshcore-link.network.d/50-meshcore-address.conf"][
            "content"
        ]
    )
    assert "server 10.77.0.1 iburst" in files["/etc/chrony/sources.d/meshcore.sources"]["content"]
    assert files["/etc/mesh-agent/pki/node.key"]["permissions"] == "0640"
    agent = yaml.safe_load(files["/etc/mesh-agent/agent.yml"]["content"])
    assert agent["trust_domain"] == "starter.mesh.example" and agent["interfaces"] == ["wlan0"]
    assert agent["mode"] == "enforce" and agent["link"]["backend"] == "native"
    # The site CA persists beside the inventory (<inventory>.pki): the next card has the same CA.
    ca = (tmp_path / "starter.pki/ca/ca.crt").read_text()
    assert files["/etc/mesh-agent/pki/ca.crt"]["content"] == ca
    proc, read = _seed(inv, "starter-03", tmp_path, operator_key)
    assert proc.returncode == 0 and _files(read)["/etc/mesh-agent/pki/ca.crt"]["content"] == ca


def test_seed_example_spire_x509pop(tmp_path, operator_key):
    """The 50-node example (SPIRE, x509pop): the card gets its x509pop key and
    certificate from the site's x509pop CA, and the server's bundle; without
    the bundle the seed fails saying how to get it."""
    _needs_tools()
    inv = _copy("example", tmp_path)
    proc, _ = _seed(inv, "rpi-harbour-03", tmp_path, operator_key)
    assert proc.returncode != 0 and "The SPIRE server bundle" in _errors(proc), proc.stdout[-2000:]
    (tmp_path / "example.pki/spire").mkdir(parents=True)
    shutil.copy(
        ROOT / "roles/lab_pki/README.md", tmp_path / "example.pki/spire/bundle.pem"
    )  # any file stands in
    proc, read = _seed(inv, "rpi-harbour-03", tmp_path, operator_key)
    assert proc.returncode == 0, proc.stdout[-3000:]
    files = _files(read)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(files["/etc/spire/agent/x509pop.crt"]["content"].encode())
    ca = x509.load_pem_x509_certificate((tmp_path / "example.pki/x509pop/ca/ca.crt").read_bytes())
    assert cert.issuer == ca.subject
    assert (
        cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "rpi-harbour-03"
    )
    assert files["/etc/spire/agent/x509pop.key"]["permissions"] == "0640"
    assert "/etc/spire/agent/bootstrap.crt" in files
    assert not any(p.startswith("/etc/mesh-agent/pki") for p in files)
    # batman-adv: the node's address on br-lan and derived MACs on its hard interfaces.
    assert (
        "Address=10.77.0.17/16"
        in files["/etc/systemd/network/50-meshcore-br-lan.network.d/50-meshcore-address.conf"][
            "content"
        ]
    )
    assert (
        "MACAddress=02:01:0a:4d:00:11"
        in files["/etc/systemd/network/50-meshcore-hardif-wlan0.network.d/50-meshcore-mac.conf"][
            "content"
        ]
    )


def test_seed_spire_join_token(tmp_path, operator_key):
    _needs_tools()
    inv = _copy("example", tmp_path)
    _set_site(inv, identity__spire_attestor="join_token")
    (tmp_path / "example.pki/spire").mkdir(parents=True)
    (tmp_path / "example.pki/spire/bundle.pem").write_text("bundle\n")
    proc, _ = _seed(inv, "rpi-north-02", tmp_path, operator_key)
    assert proc.returncode != 0 and "JOIN_TOKEN_FILE" in _errors(proc)
    token = tmp_path / "token"
    token.write_text("b1c2d3e4-token\n")
    proc, read = _seed(
        inv, "rpi-north-02", tmp_path, operator_key, "-e", f"flash_join_token_file={token}"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    env = _files(read)["/etc/spire/agent/join-token.env"]
    assert env["content"] == "SPIRE_JOIN_TOKEN=b1c2d3e4-token\n" and env["permissions"] == "0600"


def test_seed_refuses_a_host_not_in_the_inventory_and_a_missing_key(tmp_path, operator_key):
    _needs_tools()
    inv = _copy("starter", tmp_path)
    proc, _ = _seed(inv, "starter-09", tmp_path, operator_key)
    assert proc.returncode != 0
    assert "starter-09 is not a mesh node of the inventory" in _errors(proc)
    assert "starter-01, starter-02, starter-03" in _errors(proc)
    proc, _ = _seed(inv, "starter-01", tmp_path, None)
    assert proc.returncode != 0 and "No SSH key: make seed SSH_KEY=" in _errors(proc)
    proc, _ = _seed(inv, "starter-01", tmp_path, operator_key.with_suffix(""))
    assert proc.returncode != 0 and "is not an OpenSSH public key file" in _errors(proc)


def test_a_failed_seed_leaves_no_half_written_card_image(tmp_path, operator_key):
    """The card copy is written as .partial and renamed only when complete."""
    _needs_tools()
    inv = _copy("starter", tmp_path)
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    image = image_dir / "mesh-core-rpi-arm64.img"
    _fake_card(image, label="NOTSEED")  # a FAT without the CIDATA label: not our image
    manifest = {"site": {"name": "starter", "key": site_key(str(inv))}}
    (image_dir / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "flash"
    args = [
        "-i",
        str(inv),
        "playbooks/flash.yml",
        "-e",
        "flash_hosts=starter-01",
        "-e",
        f"flash_image={image}",
        "-e",
        f"flash_out_dir={out}",
        "-e",
        f"flash_ssh_key_file={operator_key}",
    ]
    proc = _ansible(*args)
    assert proc.returncode != 0 and "nothing was left behind" in _errors(proc)
    assert sorted(p.name for p in out.glob("*.img*")) == []
    # An image built from another version of the site config is refused before any copy.
    manifest["site"]["key"] = "0" * 16
    (image_dir / "manifest.json").write_text(json.dumps(manifest))
    proc = _ansible(*args)
    assert proc.returncode != 0 and "was built from another version of site starter" in _errors(
        proc
    )


def test_the_users_table_covers_the_spec():
    """docs/site-config.md lists exactly the spec's keys."""
    spec = yaml.safe_load((ROOT / "playbooks/site-config/spec.yml").read_text())["site"]

    def keys(opts: dict[str, Any], prefix: str) -> set[str]:
        out = set()
        for name, o in opts.items():
            key = f"{prefix}.{name}"
            out.add(key)
            if "options" in o:
                out |= keys(o["options"], key + ("[]" if o["type"] == "list" else ""))
        return out

    doc = (ROOT / "docs/site-config.md").read_text()
    assert set(re.findall(r"^\| `(site\.[^`]+)` \|", doc, flags=re.MULTILINE)) == keys(
        spec["options"], "site"
    )


def test_one_builder_of_the_agents_api_listen_list():
    """The site config picks the scrape address; the role alone builds the listen list from it
    (it was computed in both places, and they drifted)."""
    import jinja2

    derived = _role_vars()
    assert "mesh_agent_api_listen" not in derived
    defaults = yaml.safe_load((ROOT / "roles/mesh_agent/defaults/main.yml").read_text())
    env = jinja2.Environment()

    def render(template: str, **ctx: Any) -> Any:
        return yaml.safe_load(env.from_string(template.strip()).render(**ctx))

    def listen(**ctx: Any) -> Any:
        address = render(derived["mesh_agent_api_scrape_address"], **ctx) or ""
        return render(defaults["mesh_agent_api_listen"], mesh_agent_api_scrape_address=str(address))

    mesh = {"site": {"monitoring": {"host": "mon1"}}, "mesh_node_address": "10.77.0.3"}
    assert listen(**mesh, mesh_mgmt_address="10.0.2.15") == ["127.0.0.1:9105", "10.0.2.15:9105"]
    assert listen(**mesh) == ["127.0.0.1:9105", "10.77.0.3:9105"]
    assert listen(site={"monitoring": {"host": ""}}, mesh_node_address="10.77.0.3") == [
        "127.0.0.1:9105"
    ]
    # Outside the site config (molecule, the lab's own play) the role's default follows the
    # management address.
    assert defaults["mesh_agent_api_scrape_address"] == "{{ mesh_mgmt_address | default('') }}"


def test_spire_archives_missing_names_each_role():
    groups = {"spire_servers": ["gw1"], "mesh_nodes": ["gw1", "n2"]}
    sha = "a" * 64
    assert spire_archives_missing("gw1", {}, groups) == [
        "spire_server_archive_sha256",
        "spire_agent_archive_sha256",
    ]
    assert spire_archives_missing("n2", {"spire_agent_archive_sha256": sha}, groups) == []
    assert spire_archives_missing("n2", {"spire_agent_archive_src": "/srv/spire.tgz"}, groups) == []
    # Not 64 lowercase hex: still missing.
    assert spire_archives_missing("n2", {"spire_agent_archive_sha256": "ABC"}, groups) == [
        "spire_agent_archive_sha256"
    ]
    assert spire_archives_missing("monitor1", {}, groups) == []


def test_spire_archives_missing_is_the_rule_spire_release_asserts():
    """The site check and the role's own assert accept exactly the same archives.

    The role's ``that`` expression is read from its tasks file and evaluated by
    Ansible's templar, so an edit to either side that breaks agreement fails here.
    """
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    tasks = yaml.safe_load((ROOT / "roles/spire_release/tasks/main.yml").read_text())
    asserts = [t["ansible.builtin.assert"] for t in tasks if "ansible.builtin.assert" in t]
    that = next(a["that"] for a in asserts if "spire_release_archive_sha256" in str(a["that"]))
    groups = {"mesh_nodes": ["n1"]}
    shas = ["", "a" * 64, "A" * 64, "a" * 63, "not-hex"]
    for sha in shas:
        for src in ["", "/srv/spire.tgz"]:
            templar = Templar(
                loader=DataLoader(),
                variables={"spire_release_archive_sha256": sha, "spire_release_archive_src": src},
            )
            role_ok = templar.template(trust_as_template("{{ " + that + " }}"))
            hv = {"spire_agent_archive_sha256": sha, "spire_agent_archive_src": src}
            site_ok = spire_archives_missing("n1", hv, groups) == []
            assert site_ok == role_ok, (sha, src, role_ok, site_ok)


def test_a_spire_site_without_archive_checksums_fails_before_any_task(tmp_path):
    """The example site (SPIRE) ships with empty sha256s: site.yml names them before any
    host is touched, and one host's failure stops the whole run (any_errors_fatal)."""
    inv = _copy("example", tmp_path)
    proc = _ansible("-i", str(inv), "playbooks/site.yml")
    assert proc.returncode != 0
    err = _errors(proc)
    assert "set spire_server_archive_sha256 and spire_agent_archive_sha256" in err
    assert "set spire_agent_archive_sha256 (the 64-hex sha256" in err
    tasks = re.findall(r"^TASK \[(.+?)\]", proc.stdout, flags=re.MULTILINE)
    assert "Fail when a SPIRE release archive would be fetched without its sha256" in tasks
    assert not [t for t in tasks if not t.startswith(("Check", "Read", "Fail", "Warn"))], tasks
    assert "PLAY [SPIRE servers]" not in proc.stdout


def test_a_mesh_without_gateways_warns_once_and_changes_nothing(tmp_path):
    """No gateways (the starter) and no site.release.confirm_reach: the MAPE-K loop has no
    lease endpoints and the commit-confirm no reach target (role-vars.yml). The check warns,
    once, on the controller, reports nothing changed and does not fail; a site with
    gateways (example) or with its own reach targets is not warned. check.yml alone: the
    starter's hosts are not there to be touched."""
    warning = "WARNING: the inventory has mesh nodes but no gateways"
    task = "TASK [Warn when the mesh has no gateways and no release reach targets]"

    def check(inv: Path, *extra: str) -> tuple[str, dict[str, str]]:
        proc = _ansible("-i", str(inv), "playbooks/site-config/check.yml", *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = " ".join(proc.stdout.split())  # the YAML callback wraps long messages
        recap = dict(re.findall(r"^(\S+)\s+: (ok=.*?)\s*$", proc.stdout, flags=re.MULTILINE))
        assert recap and all(" changed=0 " in r for r in recap.values()), recap
        assert task in proc.stdout
        return out, recap

    out, recap = check(ROOT / "inventories/starter")
    assert out.count(warning) == 1, out
    assert "commit-confirm" in out and "leases" in out
    assert "inventories/example/hosts.yml" in out and "site.release.confirm_reach" in out
    assert "ok=3" in recap["localhost"] and "skipped=0" in recap["localhost"]

    # The example has gateways (its SPIRE sha256s are empty: not this test's check).
    out, recap = check(
        ROOT / "inventories/example", "-e", '{"meshcore_site_check_spire_archives": false}'
    )
    assert warning not in out
    assert "skipped=1" in recap["localhost"]

    inv = _copy("starter", tmp_path)
    _set_site(inv, release={"confirm_reach": ["10.77.0.1"]})
    out, recap = check(inv)
    assert warning not in out
    assert "skipped=1" in recap["localhost"]


def test_the_check_runs_under_limit_on_the_controller(tmp_path):
    """--limit one mesh node: the check still runs, once, on the controller (a play on
    localhost alone is skipped when localhost is not in the limit: "no hosts matched"),
    reads the whole inventory, not only the limit, and connects to no node (the starter's
    addresses are not there)."""
    spec = "Check the site config against its spec (playbooks/site-config/spec.yml)"
    checks = [
        spec,
        "Check the rules a spec cannot express",
        "Warn when the mesh has no gateways and no release reach targets",
    ]

    def tasks(proc: subprocess.CompletedProcess[str]) -> list[str]:
        return re.findall(r"^TASK \[(.+?)\]", proc.stdout, flags=re.MULTILINE)

    good = _copy("starter", tmp_path / "good")
    proc = _ansible(
        "-i", str(good), "playbooks/site-config/check.yml", "--limit", "starter-02", "-vvv"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "no hosts matched" not in proc.stdout
    assert tasks(proc)[:3] == checks
    assert proc.stdout.count("ok: [starter-02 -> localhost]") == 3, proc.stdout[-3000:]
    assert "ESTABLISH" not in proc.stdout  # -vvv names every connection opened
    recap = dict(re.findall(r"^(\S+)\s+: (ok=.*?)\s*$", proc.stdout, flags=re.MULTILINE))
    assert list(recap) == ["starter-02"] and " unreachable=0 " in recap["starter-02"], recap

    # A bad site config stops site.yml --limit at the check, naming the key.
    bad = _copy("starter", tmp_path / "bad")
    _set_site(bad, time=None)
    proc = _ansible("-i", str(bad), "playbooks/site.yml", "--limit", "starter-02")
    assert proc.returncode != 0
    assert "missing required arguments: time found in site" in _errors(proc)
    assert tasks(proc) == [spec]

    # A rule about a host outside the limit still applies.
    hosts = good / "hosts.yml"
    data = yaml.safe_load(hosts.read_text())
    data["all"]["children"]["mesh_nodes"]["hosts"]["starter-03"].pop("mesh_node_address")
    hosts.write_text(yaml.safe_dump(data))
    proc = _ansible("-i", str(good), "playbooks/site.yml", "--limit", "starter-01")
    assert proc.returncode != 0
    assert "starter-03: mesh_node_address is not set" in _errors(proc)
    assert tasks(proc) == checks[:2]


# -- the agent's config from command-line variables ------------------------------------------
def test_boolean_switches_given_with_e_on_the_command_line_write_a_valid_agent_config(tmp_path):
    """``-e mesh_agent_mapek_enabled=true`` reaches the role as the string "true": the
    config template writes booleans, so the agent's own check (the task's ``validate``)
    accepts it. Found on the lab: the agent refused ``enabled: "true"``."""
    if not PLAYBOOK.exists():
        pytest.skip("needs the project's .venv (make setup)")
    from mesh_agent.config import parse_config

    out = tmp_path / "agent.yml"
    play = tmp_path / "render.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Render the agent config", "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(ROOT / "roles/mesh_agent/defaults/main.yml")],
        "vars": {"mesh_node_address": "10.77.0.3"},
        "tasks": [{"name": "Render", "ansible.builtin.template": {
            "src": str(ROOT / "roles/mesh_agent/templates/agent.yml.j2"),
            "dest": str(out), "mode": "0600"}}],
    }]))
    for enabled, echo in (("true", "false"), ("no", "yes")):
        proc = _ansible(str(play), "-i", "localhost,", "-c", "local",
                        "-e", f"ansible_python_interpreter={sys.executable}",
                        "-e", f"mesh_agent_mapek_enabled={enabled}",
                        "-e", f"mesh_agent_link_echo={echo}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = yaml.safe_load(out.read_text())
        assert data["mapek"]["enabled"] is (enabled in ("true", "yes"))
        assert data["link"]["echo"] is (echo in ("true", "yes"))
        cfg = parse_config(data)
        assert cfg.mapek.enabled is data["mapek"]["enabled"]
