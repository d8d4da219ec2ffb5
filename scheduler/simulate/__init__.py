"""The simulator: a cloud of simulated hosts replayed through the real engine and the real queue policy.

For scale benchmarks and what-if planning only (issue 6, the house rule of ARCHITECTURE §2). A
``Trace`` holds hosts, the instances already running on them and a stream of events (arrivals,
departures). ``generate`` makes one, ``record`` takes one from the database, ``Trace.save`` and
``Trace.load`` keep one as JSON lines. ``Simulator.run`` replays it over a ``HostTable`` with
``scheduler.engine``: an arrival that finds no room and asked to wait goes into the admission queue,
which ``scheduler.queueing.admission_pass`` serves on each departure and on a periodic tick, on a
simulated clock. Placements on simulated hosts are "provisioned" through ``SimulatorDriver``
(memory only); a what-if over recorded real hosts only books them in the table: nothing here ever
acts on a real host.

The instances already running are columns of numpy arrays, not objects: a cloud of 100,000 hosts
with ten instances each is a million records in a few dozen megabytes. Apart from ``record``
(which reads the database), nothing here needs Django. Registering a trace's simulated hosts as
``Host`` rows is compute's (``compute.services.hosts.simulated_hosts_register``).

The modules: ``trace`` (the types and the file format), ``loader`` (the strict reader),
``clouds`` (``generate`` and ``record``), ``state`` (the cloud during a run), ``run`` (the
``Simulator``) and ``report`` (what a run reports).
"""

from scheduler.simulate.clouds import FLAVORS, SHAPES, generate, record
from scheduler.simulate.report import Quality, Report, percentile
from scheduler.simulate.run import Simulator
from scheduler.simulate.state import BEHIND_THE_QUEUE, DOMAIN_PREFIX, HELD_FOR_OVERDUE, NEVER_FITS, SimState
from scheduler.simulate.trace import (
    GROUP_POLICIES,
    PRIORITY_NAMES,
    TRACE_VERSION,
    Arrival,
    Departure,
    Event,
    Instances,
    Trace,
    TraceError,
)

__all__ = [
    "BEHIND_THE_QUEUE",
    "DOMAIN_PREFIX",
    "FLAVORS",
    "GROUP_POLICIES",
    "HELD_FOR_OVERDUE",
    "NEVER_FITS",
    "PRIORITY_NAMES",
    "SHAPES",
    "TRACE_VERSION",
    "Arrival",
    "Departure",
    "Event",
    "Instances",
    "Quality",
    "Report",
    "SimState",
    "Simulator",
    "Trace",
    "TraceError",
    "generate",
    "percentile",
    "record",
]
