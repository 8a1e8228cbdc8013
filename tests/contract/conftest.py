"""The contract suite's backends: every test runs once against the Nova simulator and once
against a real Nova 34, through openstacksdk, with the same assertions.

The backend fixture is package-scoped, so each Nova starts once for the whole suite (a real
one takes about a minute and 1.75 GiB) and is stopped when the suite ends, before any other
real-Nova test starts its own. Tests run in the ``realnova`` xdist group so that one worker
holds both. After each test, ``restore()`` puts the hosts back (computes running, not
forced down, enabled) and deletes the test's servers, so tests do not depend on each other.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from hagent.lab.nova import NovaSim, Timings
from tests.contract.backend import HOSTS, Backend, Deadlines

#: The simulator at a fifth of real Nova's durations (service_down_time 2 s, evacuation
#: ~0.6 s, rpc_response_timeout 12 s).
SIM_TIMINGS = Timings().scaled(0.2)


def _sim(directory: Path) -> tuple[Backend, object]:
    sim = NovaSim.start(directory, HOSTS, timings=SIM_TIMINGS)
    deadlines = Deadlines(boot=10.0, transition=10.0,
                          service_down=SIM_TIMINGS.service_down_time + 5.0,
                          compute_start=10.0,
                          rpc_response_timeout=SIM_TIMINGS.rpc_response_timeout, period=0.02)
    return Backend("sim", sim, image="cirros", deadlines=deadlines), sim


def _real(directory: Path) -> tuple[Backend, object]:
    from hagent.lab.realnova import RealNova

    nova = RealNova.start(directory, HOSTS)
    try:
        # service_down_time is 10 s there (hagent/lab/realnova/configs.py)
        deadlines = Deadlines(boot=60.0, transition=90.0, service_down=30.0,
                              compute_start=120.0, rpc_response_timeout=60.0, period=0.25)
        return Backend("real", nova, image=nova.image_id, deadlines=deadlines), nova
    except BaseException:
        nova.stop()
        raise


@pytest.fixture(scope="package", params=["sim", "real"])
def backend(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    start = _sim if request.param == "sim" else _real
    directory = tmp_path_factory.mktemp(f"nova-{request.param}")
    nova_backend, handle = start(directory)
    try:
        yield nova_backend
    finally:
        nova_backend.close()
        if request.param == "real":  # stopping removes them: Nova's logs are the evidence
            shutil.copytree(handle.record["logs"], directory / "logs", dirs_exist_ok=True)
        handle.stop()


@pytest.fixture
def nova(backend: Backend) -> Iterator[Backend]:
    """The backend, put back in order after the test (hosts up and enabled, servers gone)."""
    yield backend
    backend.restore()
