"""The benchmarks' shared work directory and options (meshcore_testkit.bench), no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshcore_testkit.bench import bench_parser, bench_workdir


class FakeLab:
    def __init__(self, workdir: Path, seen: list[str]) -> None:
        self.workdir, self.seen = workdir, seen

    def down(self) -> None:  # the directory must still be there when the lab goes down
        self.seen.append(f"down, dir exists: {self.workdir.is_dir()}")


def test_the_lab_goes_down_before_its_directory_even_on_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_KEEP", raising=False)
    seen: list[str] = []
    with pytest.raises(RuntimeError), \
            bench_workdir("t-bench-", lambda d: FakeLab(d, seen)) as (workdir, lab):
        (workdir / "agent.log").write_text("x")
        assert lab.workdir == workdir
        raise RuntimeError("a trial failed")
    assert seen == ["down, dir exists: True"]
    assert not workdir.exists()


def test_bench_keep_keeps_the_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_KEEP", "1")
    seen: list[str] = []
    with bench_workdir("t-bench-", lambda d: FakeLab(d, seen)) as (workdir, _lab):
        pass
    assert seen == ["down, dir exists: True"] and workdir.is_dir()
    workdir.rmdir()


def test_a_lab_that_cannot_be_built_leaves_no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_KEEP", raising=False)
    made: list[Path] = []

    def broken(d: Path) -> FakeLab:
        made.append(d)
        raise OSError("no netns")

    with pytest.raises(OSError), bench_workdir("t-bench-", broken):
        pass
    assert made and not made[0].exists()


def test_the_shared_options_and_a_bench_s_own() -> None:
    p = bench_parser("doc", topologies="ladder:8", impls="mesh_agent")
    p.add_argument("--modes", default="silent")
    a = p.parse_args(["--trials", "3"])
    assert (a.topologies, a.impls, a.trials, a.modes) == ("ladder:8", "mesh_agent", 3, "silent")


def test_sigterm_takes_the_lab_down(tmp_path: Path) -> None:
    """A bench killed with SIGTERM (a script's `kill`) still takes its lab down."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "down"
    code = f"""
import time
from pathlib import Path
from meshcore_testkit.bench import bench_workdir

class Lab:
    def down(self):
        time.sleep(0.2)
        Path({str(marker)!r}).write_text("down")

with bench_workdir("bench-sigterm-", lambda d: Lab()) as (workdir, lab):
    print(workdir, flush=True)
    time.sleep(30)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    workdir = Path(proc.stdout.readline().strip())
    assert workdir.is_dir()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a second one must not cut the teardown short
    proc.wait(timeout=10)
    assert marker.read_text() == "down"
    assert not workdir.exists()
