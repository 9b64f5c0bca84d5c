"""CycloneDX SBOMs of the release: the agent's Python bundle, and the image's Debian packages.

- Python: the agent's dependency closure (walked from ``mesh-agent``'s metadata in the
  build venv, whose versions are requirements/dev.txt's pins, which also constrain
  both agent bundles), written by ``cyclonedx-py requirements --output-reproducible``.
- Debian: the package list of the rpi-arm64 image (its ``manifest.json``, read by
  ``meshcore_tools.image.manifest`` from the rootfs's dpkg status), written with
  cyclonedx-python-lib. Serial number and timestamp derive from the inputs, so the
  document is reproducible.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SPEC = "1.6"


def python_closure(root: str = "mesh-agent") -> dict[str, str]:
    """{canonical name: installed version} of *root* and everything it requires, without
    extras and with markers evaluated for this interpreter."""
    seen: dict[str, str] = {}
    pending = [root]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not Marker(str(req.marker)).evaluate({"extra": ""}):
                continue
            pending.append(req.name)
    return dict(sorted(seen.items()))


def python_sbom(pyproject: Path, root: str = "mesh-agent") -> bytes:
    """The CycloneDX JSON of the agent bundle's Python packages (the root is the agent)."""
    pins = {n: v for n, v in python_closure(root).items() if n != canonicalize_name(root)}
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp, "requirements.txt")
        req.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
        out = Path(tmp, "sbom.json")
        subprocess.run([sys.executable, "-m", "cyclonedx_py", "requirements",
                        "--output-reproducible", "--of", "JSON", "--sv", SPEC,
                        "--mc-type", "application", "--pyproject", str(pyproject),
                        "-o", str(out), str(req)],
                       check=True, capture_output=True, text=True)
        return out.read_bytes()


def debian_sbom(image_manifest: Mapping[str, Any], epoch: int) -> bytes:
    """The CycloneDX JSON of an image's Debian packages (``packages`` of its manifest)."""
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from packageurl import PackageURL

    pkgs = sorted(image_manifest["packages"], key=lambda p: (p["name"], p.get("arch", "")))
    name = str(image_manifest.get("name", "image"))
    components = [
        Component(name=p["name"], version=p["version"], type=ComponentType.LIBRARY,
                  bom_ref=f"deb:{p['name']}:{p.get('arch', '')}",
                  purl=PackageURL("deb", "debian", p["name"], p["version"],
                                  {"arch": p["arch"]} if p.get("arch") else None))
        for p in pkgs
    ]
    digest = json.dumps(pkgs, sort_keys=True)
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"mesh-core-image-sbom:{name}:{digest}")
    meta = BomMetaData(component=Component(name=name, type=ComponentType.OPERATING_SYSTEM,
                                           bom_ref=f"image:{name}"),
                       timestamp=dt.datetime.fromtimestamp(epoch, dt.UTC))
    bom = Bom(components=components, serial_number=serial, metadata=meta)
    assert meta.component is not None
    bom.register_dependency(meta.component, components)
    text = make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string(indent=2)
    return (text if text.endswith("\n") else text + "\n").encode()
