"""Self-healing: a MAPE-K loop on every node (issue 19; docs/mapek.md).

Sans-I/O phases, each taking observations and time and returning data:
:mod:`.monitor` (signals against thresholds Knowledge tunes within bounds),
:mod:`.analyze` (crossings become incidents, behind a :class:`Detector`
plug-in), :mod:`.plan` (a fixed rule table or Thompson sampling over the
MTTR and success history), :mod:`.execute` (actions with undo and expiry,
RFC 2439-style damping for link quarantine), :mod:`.safety` (observe or
enforce, rate limit, leases for disruptive actions), composed by
:mod:`.loop`. :mod:`.knowledge` keeps what was learned in the agent's SQLite
database. The agent's shell drives the loop from a timer (``mapek.enabled``).
"""

from mesh_agent.mapek.analyze import Analyzer, Detector, Finding, Incident, IncidentClass
from mesh_agent.mapek.execute import Action, Damping, Executor, Op
from mesh_agent.mapek.knowledge import Knowledge
from mesh_agent.mapek.loop import MapeK, Step
from mesh_agent.mapek.monitor import LinkSample, Monitor, Observation, Signal, Target, Thresholds
from mesh_agent.mapek.plan import ActionKind, ActionStats, FixedPolicy, ThompsonPolicy, make_policy
from mesh_agent.mapek.safety import Lease, LeaseProvider, NoQuorum, RateLimit, Safety

__all__ = [
    "Action", "ActionKind", "ActionStats", "Analyzer", "Damping", "Detector", "Executor",
    "Finding", "FixedPolicy", "Incident", "IncidentClass", "Knowledge", "Lease", "LeaseProvider",
    "LinkSample", "MapeK", "Monitor", "NoQuorum", "Observation", "Op", "RateLimit", "Safety",
    "Signal", "Step", "Target", "ThompsonPolicy", "Thresholds", "make_policy",
]
