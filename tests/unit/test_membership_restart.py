"""An agent restarts (a role re-exec or ``systemctl restart``): the old process leaves
gracefully (Dead(self, inc N, source=self)) and a new one, same name and address, comes back at
incarnation 0. Whatever the order in which the leave and the new process's join reach the
others, every peer must list it alive within RESTART_BOUND, and declare it dead when it later
crashes (a member stuck in "left" is never probed, so its death would go unnoticed).

Real ``Membership`` cores on the virtual-time network of test_membership_swim."""

from __future__ import annotations

import random

import pytest

from hagent.membership import Membership, MemberDead
from tests.unit.test_membership_swim import KNOBS, NAMES, Net

#: Seconds from the new process's start until every peer lists it alive. The reminders it gets
#: arrive within about one probe round or gossip round; 3 s leaves room for that plus a
#: refutation's epidemic, and is well below the join resync (5-10 s) and push-pull (30 s)
#: that repaired it before, when they repaired it at all.
RESTART_BOUND = 3.0

ME = "n5"


def new_process(net: Net, seed: int) -> Membership:
    """The restarted agent: a fresh core, incarnation 0, same name, address and meta."""
    old = net.nodes[ME]
    core = Membership(ME, ME, KNOBS, random.Random(seed), net.now, dict(old.meta))
    net.nodes[ME] = core
    return core


def restart(net: Net, ordering: str, seed: int) -> None:
    """Leave from the old process and join from the new one, in ``ordering``."""
    seeds = ["n0"]
    if ordering == "seeds_dead":            # its only seed died: it cannot reach anyone itself
        net.dead.add("n0")
        net.run(net.now + 20.0)
        assert net.states("n0") == {n: "dead" for n in NAMES[1:]}
        ordering = "leave_first"
    leave = net.nodes[ME].leave(net.now)
    if ordering == "leave_first":          # the leave has spread before the new process joins
        net.apply(ME, leave)
        net.run(net.now + 1.0)
        new = new_process(net, seed)
        net.apply(ME, new.join(seeds, net.now))
    elif ordering == "join_first":          # the seed answers "alive, inc 0", then the leave lands
        new = new_process(net, seed)
        net.apply(ME, new.join(seeds, net.now))
        net.run(net.now + 0.05)
        net.apply(ME, leave)
    elif ordering == "leave_misses_seed":   # the seed hears of the leave only by epidemic
        drop = net.drop
        net.drop = lambda s, d, m: d == "n0" or drop(s, d, m)
        net.apply(ME, leave)
        net.drop = drop
        new = new_process(net, seed)
        net.apply(ME, new.join(seeds, net.now))
    else:
        raise AssertionError(ordering)
    net.run(net.now + 0.01)                 # every leave message has landed (latency 1 ms)


ORDERINGS = ("leave_first", "join_first", "leave_misses_seed", "seeds_dead")


def alive_everywhere(net: Net) -> bool:
    return set(net.states(ME).values()) == {"alive"}


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("seed", range(4))
def test_restarted_node_is_alive_everywhere_then_declared_dead_when_it_crashes(
        ordering: str, seed: int) -> None:
    net = Net(NAMES, seed=seed)
    net.run(net.now + 10.0)                 # past the joiners' resync: a settled cluster
    restart(net, ordering, seed)
    started = net.now
    while not alive_everywhere(net):
        assert net.now - started < RESTART_BOUND, (ordering, seed, net.states(ME))
        net.run(net.now + 0.05)
    # Alive at every peer, and it stays so (nothing left over flips it back to "left").
    net.run(net.now + 40.0)
    assert alive_everywhere(net), (ordering, seed, net.states(ME))
    crashed = net.now
    net.dead.add(ME)
    net.run(crashed + 15.0)
    assert set(net.states(ME).values()) == {"dead"}, (ordering, seed, net.states(ME))
    assert {o for t, o, e in net.of(MemberDead, ME) if t > crashed} == set(net.states(ME))


def test_a_node_that_really_left_stays_left() -> None:
    net = Net(NAMES)
    net.apply(ME, net.nodes[ME].leave(net.now))
    net.dead.add(ME)
    net.run(net.now + 60.0)
    assert set(net.states(ME).values()) == {"left"}
    assert not net.of(MemberDead, ME)
