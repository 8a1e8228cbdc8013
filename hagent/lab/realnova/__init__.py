"""A real Nova lab on this machine: Keystone 30, Placement 16 and Nova 34 from PyPI in a
virtualenv of their own, MariaDB and RabbitMQ from Debian, one fake-driver nova-compute per
lab host, image and network stand-ins. ``RealNova`` is its handle, with the methods of the
simulator's ``NovaSim`` the lab, tests and benchmarks use. docs/nova-real.md.
"""
from hagent.lab.realnova.handle import RealNova
from hagent.lab.realnova.supervisor import RealNovaError

__all__ = ["RealNova", "RealNovaError"]
