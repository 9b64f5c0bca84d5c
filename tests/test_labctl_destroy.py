"""labctl destroy: a container that refuses removal once (podman's stop/kill race,
"container state improper: stopped") is removed on a retry; one that never goes
fails with its id named."""

from __future__ import annotations

import subprocess
from typing import Any

import labctl as destroy
import pytest


class FakePodman:
    def __init__(self, ids: list[str], refusals: dict[str, int]) -> None:
        self.alive = set(ids)
        self.refusals = dict(refusals)
        self.rm_calls = 0

    def __call__(self, *argv: str, check: bool = True, input: str | None = None) -> Any:
        if argv[:2] == ("podman", "rm"):
            self.rm_calls += 1
            for cid in [a for a in argv[2:] if not a.startswith("-") and a != "2"]:
                if self.refusals.get(cid, 0) > 0:
                    self.refusals[cid] -= 1
                else:
                    self.alive.discard(cid)
            return subprocess.CompletedProcess(list(argv), 0 if not self.refusals else 1, stdout="")
        assert argv[:2] == ("podman", "ps")
        return subprocess.CompletedProcess(list(argv), 0, stdout="\n".join(sorted(self.alive)))


def test_a_container_refusing_once_is_removed_on_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePodman(["aaa", "bbb"], {"bbb": 1})
    monkeypatch.setattr(destroy, "sh", fake)
    monkeypatch.setattr(destroy.time, "sleep", lambda _s: None)
    destroy.remove_containers(["aaa", "bbb"])
    assert fake.alive == set()
    assert fake.rm_calls == 2


def test_a_container_that_never_goes_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePodman(["aaa", "bbb"], {"bbb": 99})
    monkeypatch.setattr(destroy, "sh", fake)
    monkeypatch.setattr(destroy.time, "sleep", lambda _s: None)
    with pytest.raises(SystemExit, match="bbb"):
        destroy.remove_containers(["aaa", "bbb"], attempts=3)
    assert fake.alive == {"bbb"}
    assert fake.rm_calls == 3
