"""Host aggregates as recovery uses them (a reserved-hosts aggregate): create, add a host,
set metadata, list, remove the host, delete, and the conflicts Nova answers."""
from __future__ import annotations

import uuid

import openstack.exceptions as osexc
import pytest

pytestmark = [pytest.mark.xdist_group("realnova"), pytest.mark.timeout(900)]


def test_aggregate_lifecycle_and_conflicts(nova):
    host = nova.hosts[1]
    name = f"contract-{uuid.uuid4().hex[:8]}"
    aggregate = nova.conn.compute.create_aggregate(name=name)
    try:
        assert (aggregate.name, aggregate.availability_zone) == (name, None)
        uuid.UUID(aggregate.uuid)
        with pytest.raises(osexc.ConflictException, match=f"Aggregate {name} already exists."):
            nova.conn.compute.create_aggregate(name=name)
        aggregate = nova.conn.compute.add_host_to_aggregate(aggregate, host)
        assert aggregate.hosts == [host]
        with pytest.raises(osexc.ConflictException,
                           match=f"Aggregate {aggregate.id} already has host {host}."):
            nova.conn.compute.add_host_to_aggregate(aggregate, host)
        with pytest.raises(osexc.NotFoundException):
            nova.conn.compute.add_host_to_aggregate(aggregate, "no-such-host")
        aggregate = nova.conn.compute.set_aggregate_metadata(aggregate, reserved="true")
        assert aggregate.metadata == {"reserved": "true"}
        (listed,) = [a for a in nova.conn.compute.aggregates() if a.id == aggregate.id]
        assert (listed.name, listed.hosts, listed.metadata) == \
            (name, [host], {"reserved": "true"})
        with pytest.raises(osexc.BadRequestException, match="not empty"):
            nova.conn.compute.delete_aggregate(aggregate, ignore_missing=False)
        aggregate = nova.conn.compute.remove_host_from_aggregate(aggregate, host)
        assert aggregate.hosts == []
        with pytest.raises(osexc.NotFoundException,
                           match=f"Cannot remove host {host} in aggregate {aggregate.id}"):
            nova.conn.compute.remove_host_from_aggregate(aggregate, host)
        with pytest.raises(osexc.ForbiddenException):
            list(nova.demo.compute.aggregates())
    finally:
        for leftover in [a for a in nova.conn.compute.aggregates() if a.name == name]:
            for member in leftover.hosts or []:
                nova.conn.compute.remove_host_from_aggregate(leftover, member)
            nova.conn.compute.delete_aggregate(leftover, ignore_missing=False)
    with pytest.raises(osexc.NotFoundException):
        nova.conn.compute.get_aggregate(aggregate.id)
