"""A real Nova lab on this machine: Keystone 30, Placement 16 and Nova 34 from PyPI in a
virtualenv of their own, MariaDB and RabbitMQ from Debian, one fake-driver nova-compute per
lab host, image and network stand-ins. ``RealNova`` is its handle, with the methods of the
simulator's ``NovaSim`` the lab, tests and benchmarks use. docs/nova-real.md.

The names are imported on first use, so ``python -m hagent.lab.realnova.install`` runs its
module once (not also as an import of this package).
"""
from __future__ import annotations

from typing import Any

__all__ = ["RealNova", "RealNovaError"]


def __getattr__(name: str) -> Any:
    if name == "RealNova":
        from hagent.lab.realnova.handle import RealNova
        return RealNova
    if name == "RealNovaError":
        from hagent.lab.realnova.supervisor import RealNovaError
        return RealNovaError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
