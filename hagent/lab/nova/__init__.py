"""A Nova (and Keystone) simulator that speaks the real HTTP API openstacksdk uses, with
Nova's rules, simulated durations, host power and an invariant checker. See
docs/nova-simulator.md; ``NovaSim`` (sim.py) is the handle to start and read it."""
from hagent.lab.nova.model import HostSpec, NovaModel, Timings
from hagent.lab.nova.sim import NovaSim, NovaSimError

__all__ = ["HostSpec", "NovaModel", "NovaSim", "NovaSimError", "Timings"]
