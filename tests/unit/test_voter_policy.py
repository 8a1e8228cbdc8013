"""The autopilot's rules (hagent.voters.policy): examples of each rule, hypothesis properties
over arbitrary views, and a run of many decisions against a simulated cluster in which hosts
die, get fenced and come back."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hagent.voters.policy import Decision, Registered, VoterView, assess, candidates_for, decide

NODES = [f"node{i}" for i in range(1, 8)]


def view(voters: str = "node1 node2 node3", *, target: int = 3, dead: str = "",
         fenced: str = "", incidents: str = "", suspect: str = "", nodes: int = 6,
         domains: dict[str, str] | None = None, lags: dict[str, int] | None = None,
         change: str | None = None, excluded: str = "", left: str = "",
         reachable: str | None = None) -> VoterView:
    """A view of ``nodes`` registered nodes, all alive but the ``dead``/``suspect`` ones;
    ``fenced`` hosts have an open fenced incident (``incidents``: open, not fenced); the
    leader hears over Raft from the ``reachable`` voters (default: the alive ones)."""
    names = NODES[:nodes]
    gossip = {n: "alive" for n in names}
    gossip.update({n: "dead" for n in dead.split()})
    gossip.update({n: "suspect" for n in suspect.split()})
    gossip.update({n: "left" for n in left.split()})
    domains, lags = domains or {}, lags or {}
    heard = (frozenset(v for v in voters.split() if gossip.get(v) == "alive")
             if reachable is None else frozenset(reachable.split()))
    return VoterView(
        voters=tuple(voters.split()), target=target, gossip=gossip, reachable=heard,
        incidents=frozenset(incidents.split()) | frozenset(fenced.split()),
        fenced=frozenset(fenced.split()),
        registered={n: Registered(domains.get(n, ""), lags.get(n)) for n in names},
        change=change, excluded=frozenset(excluded.split()))


# --- the rules, one example each ------------------------------------------------------------

def test_all_healthy_at_target_changes_nothing() -> None:
    a = assess(view())
    assert a.decision is None
    assert a.reason == "3 voters, target 3, all alive"


def test_a_dead_and_fenced_voter_is_removed_first_naming_its_replacement() -> None:
    d = decide(view(dead="node2", fenced="node2"))
    assert d == Decision("remove", "node2", "voter node2 is dead and fenced; then add node4")


def test_then_the_best_candidate_is_added_back_to_the_target() -> None:
    d = decide(view("node1 node3", dead="node2", fenced="node2"))
    assert d is not None and (d.op, d.node) == ("add", "node4")
    assert d.reason.startswith("2 voters, target 3: adding node4")


@pytest.mark.parametrize("fenced", ["", "node2"])
def test_a_dead_voter_not_yet_fenced_is_left_alone(fenced: str) -> None:
    # Declared dead (an open incident) but its lease has not run out: it may be partitioned
    # and still serving. Only the fenced variant may be replaced.
    a = assess(view(dead="node2", incidents="node2", fenced=fenced))
    if fenced:
        assert a.decision == Decision("remove", "node2",
                                      "voter node2 is dead and fenced; then add node4")
    else:
        assert a.decision is None
        assert "node2 not alive but not fenced" in a.reason


def test_a_fenced_voter_alive_again_in_gossip_is_not_removed() -> None:
    # Its incident stays open until the up damping passed; it is back as the voter it was.
    assert decide(view(fenced="node2")) is None
    assert decide(view(fenced="node2", suspect="node2")) is None


def test_nothing_while_a_change_is_in_flight() -> None:
    a = assess(view("node1 node3", change="add node4, catching up"))
    assert a.decision is None
    assert a.reason == "a change is in flight (add node4, catching up); one at a time"


def test_nothing_without_a_majority_of_the_voters_alive() -> None:
    a = assess(view(dead="node2 node3", fenced="node2 node3"))
    assert a.decision is None
    assert a.reason.startswith("only 1 of 3 voters alive (node1)")


def test_no_removal_without_a_replacement() -> None:
    # Three nodes in all: a dead voter stays one (removing it would gain nothing, and keeps
    # the host from returning as a voter).
    a = assess(view(dead="node3", fenced="node3", nodes=3))
    assert a.decision is None
    assert "no eligible non-voter can replace it" in a.reason


def test_a_set_above_target_drops_a_dead_voter_without_replacement() -> None:
    d = decide(view("node1 node2 node3 node4", dead="node4", fenced="node4", nodes=4))
    assert d == Decision("remove", "node4", "voter node4 is dead and fenced; 3 voters stay, "
                                            "target 3")


def test_a_voter_gossip_lost_track_of_counts_as_alive_while_the_leader_hears_it() -> None:
    # node2 re-executed and gossip still holds its leave; Raft hears it: a majority is alive.
    v = view(left="node2", dead="node3", fenced="node3", reachable="node1 node2")
    assert decide(v) == Decision("remove", "node3",
                                 "voter node3 is dead and fenced; then add node4")
    # Without Raft's word only node1 would count: no change.
    assert decide(view(left="node2", dead="node3", fenced="node3", reachable="node1")) is None


def test_a_fenced_voter_the_leader_still_hears_is_not_replaced() -> None:
    assert decide(view(dead="node2", fenced="node2", reachable="node1 node2 node3")) is None


def test_a_returned_voter_stays_a_non_voter() -> None:
    # node1 was replaced by node4; it is back, alive and registered: nothing changes.
    assert decide(view("node2 node3 node4")) is None


def test_candidates_must_be_alive_without_an_incident_and_not_excluded() -> None:
    v = view("node1 node3", dead="node4", incidents="node5", suspect="node6", nodes=7,
             excluded="node7")
    assert candidates_for(v, ["node1", "node3"]) == ["node2"]
    d = decide(v)
    assert d is not None and (d.op, d.node) == ("add", "node2")


def test_a_voter_whose_removal_was_refused_is_left_alone_while_excluded() -> None:
    assert decide(view(dead="node2", fenced="node2", excluded="node2")) is None


def test_a_new_failure_domain_wins_over_lag_and_name() -> None:
    domains = {"node1": "rack1", "node3": "rack2", "node4": "rack1", "node5": "rack2",
               "node6": "rack3"}
    d = decide(view("node1 node3", domains=domains, lags={"node4": 0, "node6": 50}))
    assert d is not None and d.node == "node6"
    assert "(failure domain rack3)" in d.reason


def test_the_dead_voters_domain_is_free_for_its_replacement() -> None:
    domains = {"node1": "rack1", "node2": "rack2", "node3": "rack3", "node4": "rack1",
               "node5": "rack3", "node6": "rack2"}
    v = view(dead="node2", fenced="node2", domains=domains)
    assert decide(v) == Decision("remove", "node2", "voter node2 is dead and fenced; then add "
                                                    "node6 (failure domain rack2)")


def test_then_smallest_lag_then_name() -> None:
    assert decide(view("node1 node3", lags={"node5": 3, "node6": 1})).node == "node6"
    assert decide(view("node1 node3", lags={"node5": 0})).node == "node5"  # unknown lags last
    assert decide(view("node1 node3")).node == "node2"


def test_five_voters_two_dead_removes_both_then_adds() -> None:
    v = view("node1 node2 node3 node4 node5", target=5, dead="node4 node5",
             fenced="node4 node5", nodes=7)
    assert decide(v).node == "node4"
    v = view("node1 node2 node3 node5", target=5, dead="node4 node5", fenced="node4 node5",
             nodes=7)
    assert (decide(v).op, decide(v).node) == ("remove", "node5")


def test_no_voters_no_change() -> None:
    a = assess(view(""))
    assert a.decision is None and a.reason.startswith("only 0 of 0 voters alive")


# --- properties over arbitrary views --------------------------------------------------------

STATES = st.sampled_from(["alive", "alive", "alive", "suspect", "dead", "left", None])


@st.composite
def views(draw: st.DrawFn) -> VoterView:
    n = draw(st.integers(1, 7))
    names = NODES[:n]
    voters = draw(st.lists(st.sampled_from(names), min_size=0, max_size=n, unique=True))
    gossip = {}
    for name in names:
        state = draw(STATES)
        if state is not None:
            gossip[name] = state
    incidents = draw(st.frozensets(st.sampled_from(names)))
    fenced = draw(st.frozensets(st.sampled_from(names))) & incidents
    registered = {name: Registered(draw(st.sampled_from(["", "a", "b", "c"])),
                                   draw(st.one_of(st.none(), st.integers(0, 200))))
                  for name in draw(st.frozensets(st.sampled_from(names)))}
    reachable = draw(st.frozensets(st.sampled_from(voters))) if voters else frozenset()
    return VoterView(voters=tuple(voters), target=draw(st.sampled_from([3, 5])), gossip=gossip,
                     reachable=reachable, incidents=incidents, fenced=fenced, registered=registered,
                     change=draw(st.one_of(st.none(), st.just("add node9, catching up"))),
                     excluded=draw(st.frozensets(st.sampled_from(names), max_size=2)))


def _alive(v: VoterView, names: list[str] | set[str]) -> int:
    """Voters alive in gossip or heard over Raft (a candidate: by gossip)."""
    return sum(1 for n in names if v.gossip.get(n) == "alive" or n in v.reachable)


@settings(max_examples=2000, deadline=None)
@given(views())
def test_properties_of_every_decision(v: VoterView) -> None:
    a = assess(v)
    assert a.reason  # always a reason, for the log and /status
    d = a.decision
    if d is None:
        return
    assert d.reason == a.reason
    voters = set(v.voters)
    # Never two changes in flight.
    assert v.change is None
    # Only with a majority of the current voters alive, and never a change after which a
    # majority of the new set is not alive.
    assert 2 * _alive(v, voters) > len(voters)
    after = voters - {d.node} if d.op == "remove" else voters | {d.node}
    assert 2 * _alive(v, after) > len(after)
    eligible = candidates_for(v, sorted(voters - {d.node}))
    if d.op == "remove":
        # Never a voter that is not declared dead and fenced, nor one gossip sees back.
        assert d.node in voters and d.node in v.fenced and d.node in v.incidents
        assert v.gossip.get(d.node) not in ("alive", "suspect") and d.node not in v.reachable
        assert d.node not in v.excluded
        # Only when a replacement exists (or the set stays at or above the target).
        assert eligible or len(after) >= v.target
    else:
        assert d.op == "add" and len(voters) < v.target
        assert not any(x in v.fenced and v.gossip.get(x) not in ("alive", "suspect")
                       and x not in v.excluded and x not in v.reachable
                       for x in voters), "removal comes first"
        assert d.node not in voters and d.node in v.registered
        assert v.gossip.get(d.node) == "alive" and d.node not in v.incidents
        assert d.node not in v.excluded
        # Failure-domain preference: a candidate in a domain no voter has wins if any exists.
        taken = {v.registered[x].failure_domain for x in voters if x in v.registered} - {""}
        fresh = [c for c in eligible if v.registered[c].failure_domain not in taken | {""}]
        if fresh:
            assert v.registered[d.node].failure_domain in {v.registered[c].failure_domain
                                                           for c in fresh}
        assert d.node == eligible[0]


@settings(max_examples=500, deadline=None)
@given(views(), st.randoms(use_true_random=False))
def test_the_answer_does_not_depend_on_the_order_the_view_was_built_in(
        v: VoterView, rnd: random.Random) -> None:
    def shuffled(mapping: dict) -> dict:
        items = list(mapping.items())
        rnd.shuffle(items)
        return dict(items)

    voters = list(v.voters)
    rnd.shuffle(voters)
    other = VoterView(voters=tuple(voters), target=v.target, gossip=shuffled(dict(v.gossip)),
                      reachable=v.reachable, incidents=v.incidents, fenced=v.fenced,
                      registered=shuffled(dict(v.registered)), change=v.change,
                      excluded=v.excluded)
    assert assess(other) == assess(v)


# --- many decisions against a simulated cluster ---------------------------------------------

class HealingCluster(RuleBasedStateMachine):
    """Seven hosts, three voters. Hosts die (declared dead at once: an open incident), get
    fenced later, come back; the autopilot's decisions commit at once. The log must keep a
    quorum whenever a majority of the voters is alive, and once failures stop with enough
    healthy hosts the set heals back to three healthy voters."""

    @initialize()
    def start(self) -> None:
        self.gossip = {n: "alive" for n in NODES}
        self.voters = {"node1", "node2", "node3"}
        self.incidents: set[str] = set()
        self.fenced: set[str] = set()

    def view(self) -> VoterView:
        heard = frozenset(v for v in self.voters if self.gossip[v] == "alive")
        return VoterView(voters=tuple(sorted(self.voters)), target=3, gossip=dict(self.gossip),
                         reachable=heard,
                         incidents=frozenset(self.incidents), fenced=frozenset(self.fenced),
                         registered={n: Registered() for n in NODES})

    def quorum(self) -> bool:
        return 2 * _alive(self.view(), self.voters) > len(self.voters)

    @precondition(lambda self: sum(s == "alive" for s in self.gossip.values()) > 1)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(sorted(n for n, s in self.gossip.items()
                                                  if s == "alive")))
        self.gossip[victim] = "dead"
        self.incidents.add(victim)

    @rule(data=st.data())
    def fence(self, data: st.DataObject) -> None:
        # The log commits host.fenced only while it has a quorum.
        unfenced = sorted(self.incidents - self.fenced)
        if unfenced and self.quorum():
            self.fenced.add(data.draw(st.sampled_from(unfenced)))

    @rule(data=st.data())
    def revive(self, data: st.DataObject) -> None:
        dead = sorted(n for n, s in self.gossip.items() if s == "dead")
        if dead:
            host = data.draw(st.sampled_from(dead))
            self.gossip[host] = "alive"  # its incident closes after the up damping (rule below)

    @rule()
    def close_incidents_of_live_hosts(self) -> None:
        if self.quorum():
            back = {n for n in self.incidents if self.gossip[n] == "alive"}
            self.incidents -= back
            self.fenced -= back

    @rule()
    def autopilot(self) -> None:
        had_quorum = self.quorum()
        d = decide(self.view())
        if d is None:
            return
        assert had_quorum, "a change was decided without a quorum to commit it"
        if d.op == "remove":
            self.voters.discard(d.node)
        else:
            self.voters.add(d.node)
        assert self.quorum(), f"{d} left the log without a quorum"

    @invariant()
    def never_more_than_target_from_autopilot(self) -> None:
        assert 2 <= len(self.voters) <= 3

    def teardown(self) -> None:
        # Failures stop: every declared-dead host gets fenced while the log has a quorum;
        # then, given three healthy hosts, the set heals to three healthy voters.
        if not self.quorum():
            return
        self.fenced |= self.incidents
        for _ in range(10):
            d = decide(self.view())
            if d is None:
                break
            self.voters = self.voters - {d.node} if d.op == "remove" else self.voters | {d.node}
            assert self.quorum()
        healthy = [n for n, s in self.gossip.items() if s == "alive" and n not in self.incidents]
        alive_voters = {v for v in self.voters if self.gossip[v] == "alive"}
        if len(set(healthy) | alive_voters) >= 3:
            assert len(self.voters) == 3 and len(alive_voters) == 3, (self.voters, self.gossip)


HealingCluster.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                            deadline=None)
test_healing_cluster = HealingCluster.TestCase
