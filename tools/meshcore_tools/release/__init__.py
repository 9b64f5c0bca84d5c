"""The mesh-core release: a reproducible tarball (:mod:`.build`, :mod:`.tarball`), its
SBOMs (:mod:`.sbom`) and offline k-of-n Ed25519 signatures (:mod:`.sign`); the
``meshcore-release`` command (:mod:`.cli`). Nodes verify with the agent's own
``mesh_agent.release.verify``, which this package reuses for every format."""
