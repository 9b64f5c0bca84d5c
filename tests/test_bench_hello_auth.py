"""bench_hello_auth still drives the link sensor and the hello keys as they are, and what
it times is what it says: the hellos it builds are accepted by the neighbour and the tag
its auth-only part checks is valid (a rejected hello or a failed check is cheaper, and
would still print a number). Every figure, 50 ms of timing each instead of 1 s."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from meshcore_testkit.loader import load_path

BENCH = Path(__file__).resolve().parent / "bench" / "bench_hello_auth.py"


def load() -> ModuleType:
    return load_path("bench_hello_auth", BENCH, register=True)


def test_every_figure_times_accepted_hellos_and_valid_tags(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load()
    timed = bench.per_call_us
    monkeypatch.setattr(bench, "per_call_us", lambda fn, seconds=1.0: timed(fn, 0.05))
    checked: list[bool] = []
    valid = bench.tag_valid

    def tag_valid(*args: Any) -> bool:
        checked.append(valid(*args))
        return checked[-1]

    monkeypatch.setattr(bench, "tag_valid", tag_valid)
    sensors: list[Any] = []

    class Sensor(bench.LinkSensor):  # type: ignore[name-defined,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            sensors.append(self)

    monkeypatch.setattr(bench, "LinkSensor", Sensor)
    bench.main()

    assert checked and all(checked), checked.count(False)
    # Each neighbour drops a's first hello (a knows nobody yet, so it carries no tag for
    # them); after that nothing: every timed hello was authenticated and taken.
    for s in sensors:
        assert set(s.drops) <= {"unauthenticated"} and s.drops["unauthenticated"] <= 1, s.drops

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by: dict[tuple[str, int | None], dict[str, Any]] = {}
    for r in records:
        assert r["bench"] == "hello_auth" and isinstance(r["load1"], float), r
        by[r["figure"], r.get("neighbors")] = r
    per_n = ("hello_path_us", "hello_auth_only_us", "auth_cpu_pct_of_core_at_50ms")
    assert set(by) == {(f, n) for f in per_n for n in (1, 8, 32)} | {
        ("pair_key_derivation_us", None), ("ecdsa_p256_verify_us", None)}, sorted(by)
    for n in (1, 8, 32):
        path, auth = by["hello_path_us", n], by["hello_auth_only_us", n]
        assert 0 < auth["value"] < path["value"] < 100_000, (path, auth)
        assert auth["share_of_path"] == pytest.approx(auth["value"] / path["value"], abs=0.002)
        # 20 hellos/s built (n tags each), 20 x n received (one tag checked each).
        a = auth["value"]
        assert by["auth_cpu_pct_of_core_at_50ms", n]["value"] == pytest.approx(
            (20 * a + 20 * n * a / (n + 1)) / 1e4, abs=0.002)
    assert by["hello_path_us", 32]["value"] > by["hello_path_us", 1]["value"]  # n tags
    for figure in ("pair_key_derivation_us", "ecdsa_p256_verify_us"):
        assert 0 < by[figure, None]["value"] < 100_000, by[figure, None]
