"""Run molecule scenarios, a few at a time: ``make molecule`` (MOLECULE_JOBS, default 2).

Each scenario's ``molecule test`` runs in its own process with its output in
``build/molecule/<scenario>.log``. Scenarios do not share instances (names end in the
scenario and MESHCORE_CHECKOUT_ID) nor ephemeral directories, so they can overlap:
most of a scenario's wall time is containers starting, systemd booting and Ansible
waiting on connections, not CPU. With ``--jobs 1`` the output streams to the terminal
as before.

It prints a line when a scenario starts and when it ends, then a table, and writes a
JSON report (``build/molecule/report.json``). After a failure no further scenario is
started; the running ones finish, and each failed scenario's log is printed whole, so a
CI log still shows what went wrong. Ctrl-C (or SIGTERM) stops the running scenarios and
destroys their instances.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from meshcore_tools.interrupts import interrupts


@dataclass
class Result:
    scenario: str
    ok: bool
    seconds: float
    rc: int
    log: str


class Runner:
    """Starts ``molecule test -s NAME`` processes and remembers them, so an interrupt can
    stop them and destroy what they created."""

    def __init__(self, molecule: str, log_dir: Path, stream: bool) -> None:
        self.molecule = molecule
        self.log_dir = log_dir
        self.stream = stream
        self.lock = threading.Lock()
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: list[str] = []

    def run(self, scenario: str) -> Result:
        log = self.log_dir / f"{scenario}.log"
        t0 = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [self.molecule, "test", "-s", scenario],
                stdout=None if self.stream else out,
                stderr=None if self.stream else subprocess.STDOUT,
                start_new_session=True,
            )
            with self.lock:
                self.running[scenario] = proc
            rc = proc.wait()
            with self.lock:
                self.running.pop(scenario, None)
        return Result(scenario, rc == 0, round(time.monotonic() - t0, 1), rc, str(log))

    def stop_all(self) -> None:
        """SIGTERM every running scenario's process group (SIGKILL after a minute); their
        names go to ``stopped``."""
        with self.lock:
            procs = dict(self.running)
        self.stopped.extend(procs)
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def destroy(self, scenario: str) -> None:
        subprocess.run([self.molecule, "destroy", "-s", scenario],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def run_all(scenarios: Sequence[str], jobs: int, runner: Runner) -> list[Result]:
    """Run the scenarios, ``jobs`` at a time, in the given order; after a failure start no
    more. Returns the results of those that ran, in the order they finished."""
    results: list[Result] = []
    queue = list(scenarios)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: dict[Future[Result], str] = {}
        try:
            while queue or pending:
                failed = any(not r.ok for r in results)
                while queue and not failed and len(pending) < jobs:
                    name = queue.pop(0)
                    print(f"=== molecule test -s {name} (at {time.monotonic() - t0:.0f} s)",
                          flush=True)
                    pending[pool.submit(runner.run, name)] = name
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    pending.pop(fut)
                    res = fut.result()
                    results.append(res)
                    word = "passed" if res.ok else f"FAILED (rc {res.rc})"
                    print(f"=== {res.scenario} {word} in {res.seconds:.0f} s", flush=True)
        except KeyboardInterrupt:
            runner.stop_all()  # before the pool's shutdown waits on the scenarios
            raise
    return results


def table(results: Sequence[Result], total: float, jobs: int) -> str:
    lines = [f"{'scenario':<16} {'result':<8} {'seconds':>8}"]
    for r in results:
        lines.append(f"{r.scenario:<16} {'passed' if r.ok else 'FAILED':<8} {r.seconds:>8.1f}")
    busy = sum(r.seconds for r in results)
    lines.append(f"{'wall':<16} {f'jobs={jobs}':<8} {total:>8.1f}  (sum of scenarios {busy:.1f})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="+")
    ap.add_argument("--jobs", type=int, default=2, help="scenarios at a time (default 2)")
    ap.add_argument("--log-dir", type=Path, default=Path("build/molecule"))
    ap.add_argument("--molecule", default="molecule")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    unknown = [s for s in args.scenarios if not Path("molecule", s, "molecule.yml").is_file()]
    if unknown:
        ap.error(f"no such scenario: {', '.join(unknown)} (molecule/<name>/molecule.yml)")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    jobs = min(args.jobs, len(args.scenarios))
    runner = Runner(args.molecule, args.log_dir, stream=jobs == 1)
    t0 = time.monotonic()
    with interrupts("molecule"):
        try:
            results = run_all(args.scenarios, jobs, runner)
        except KeyboardInterrupt:
            for name in runner.stopped:
                print(f"=== {name} interrupted: molecule destroy -s {name}", flush=True)
                runner.destroy(name)
            return 130
    total = round(time.monotonic() - t0, 1)
    failed = [r for r in results if not r.ok]
    if jobs > 1:
        for r in failed:
            print(f"\n=== log of the failed scenario {r.scenario} ({r.log})", flush=True)
            sys.stdout.write(Path(r.log).read_text(errors="replace"))
    not_run = [s for s in args.scenarios if s not in {r.scenario for r in results}]
    report = {"jobs": jobs, "wall_s": total, "scenarios": [asdict(r) for r in results],
              "not_run": not_run, "ok": not failed and not not_run}
    (args.log_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(results, total, jobs))
    if not_run:
        print(f"not run after the failure: {' '.join(not_run)}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
