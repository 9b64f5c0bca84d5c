"""Command line: ``mesh-agent run --config PATH`` and ``mesh-agent check-config --config PATH``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from mesh_agent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh-agent", description="mesh-core node agent")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the agent"),
        ("check-config", "validate the configuration file and exit"),
    ):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--config", "-c", default=str(DEFAULT_CONFIG_PATH), help="YAML file")
    return p


async def _run(cfg: AgentConfig) -> int:
    import datetime as dt

    from mesh_agent.agent import Agent
    from mesh_agent.identity import Identity
    from mesh_agent.identity.clock import ClockTrust
    from mesh_agent.identity.export import ClientExport
    from mesh_agent.identity.watch import IdentityWatcher, select_source
    from mesh_agent.mapek.knowledge import Knowledge
    from mesh_agent.store.events import EventLog
    from mesh_agent.store.seq import FileSeqStore

    source = select_source(cfg.identity, cfg.node_name, cfg.trust_domain)
    material = source.load()
    # Decided before our own certificate is checked: a node whose clock is far
    # off (no RTC) must still start, and does not check validity windows yet.
    trust = ClockTrust(cfg.clock_trust, max(c.not_valid_before_utc for c in material.bundle))
    trust.update(dt.datetime.now(dt.UTC), cfg.clock_sync_file.exists())
    identity = Identity(
        cfg.node_name,
        cfg.trust_domain,
        material.key,
        material.cert,
        material.bundle[0],
        material.bundle,
        node_address=str(cfg.node_address),
        check_validity=trust.trusted,
    )
    # What the agent keeps across restarts lives in state_dir (the unit's StateDirectory).
    events = EventLog.in_state_dir(cfg.state_dir)
    knowledge = (Knowledge.in_state_dir(cfg.state_dir, boot=events.boot)
                 if cfg.mapek.enabled else None)
    # The lease client presents the node's identity from a file: one streamed by the
    # Workload API is written there (and kept current), before the provider is built.
    export = ClientExport.for_config(cfg, source.name)
    export.sync(identity)
    agent = Agent(cfg, identity, seq_store=FileSeqStore(cfg.state_dir), clock_trust=trust,
                  events=events, knowledge=knowledge)
    agent.follow(IdentityWatcher(source, identity), export)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
    finally:
        if hasattr(source, "close"):
            source.close()
    return agent.exit_code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"mesh-agent: invalid configuration {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: ok ({cfg.node_name}, {cfg.node_address}, mode {cfg.mode})")
        return 0
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from mesh_agent.identity import IdentityError

    log = logging.getLogger("mesh_agent")
    try:
        code = asyncio.run(_run(cfg))
    except (OSError, IdentityError, ValueError) as exc:
        # Missing or unreadable PKI files, a key of the wrong type, a port in use:
        # operator errors that deserve one clear line, not a traceback.
        log.critical("cannot start: %s", exc)
        return 1
    except Exception as exc:
        log.critical("fatal: %s", exc, exc_info=True)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
