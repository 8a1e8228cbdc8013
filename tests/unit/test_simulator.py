"""The membership simulator driving real Membership cores in virtual time.

Every check names its seed; rerun one with ``HAGENT_SIM_SEED=<seed> pytest -k <test>``.
"""
import os
import random
import subprocess
import sys

from hagent.lab import sim_analysis
from hagent.lab.sim_network import Constant, LogNormal, Network, Uniform
from hagent.lab.simulator import SimConfig, Simulator

SEED = int(os.environ.get("HAGENT_SIM_SEED", "20261125"))


def cluster(n: int, seed: int = SEED, **config) -> Simulator:
    sim = Simulator(n, SimConfig(seed=seed, **config))
    sim.start()
    sim.run_until_converged(timeout=60.0)
    return sim


def held_by_all(sim: Simulator, subject: str, state: str, observers=None) -> bool:
    return all(sim.state_of(o, subject) == state
               for o in (observers or sim.running(exclude=subject)))


# --- the network model alone -------------------------------------------------------------

def test_latency_distributions_stay_in_their_bounds():
    rng = random.Random(SEED)
    assert Constant(0.001).sample(rng) == 0.001
    assert all(0.001 <= Uniform(0.001, 0.002).sample(rng) <= 0.002 for _ in range(1000))
    tail = LogNormal(median=0.001, sigma=0.5, tail_p=0.1, tail=(0.2, 0.3), cap=0.25)
    xs = [tail.sample(rng) for _ in range(5000)]
    assert max(xs) == 0.25 and min(xs) > 0  # the tail reaches the cap
    assert 0.0005 < sorted(xs)[len(xs) // 2] < 0.002  # the median stays near 1 ms


def test_network_loss_and_partition():
    net = Network(random.Random(SEED), loss=0.1)
    lost = sum(net.transit("a", "b") is None for _ in range(10_000))
    assert 800 < lost < 1200, f"seed {SEED}"
    net.set_loss(1.0, "a", "c")
    assert net.transit("a", "c") is None
    net.partition([["a", "b"]])
    assert net.can_reach("a", "b") and net.can_reach("c", "d")
    assert not net.can_reach("a", "c") and not net.can_reach("d", "b")
    net.heal()
    assert net.can_reach("a", "d")


# --- the simulator with the real core ----------------------------------------------------

def scripted_run(seed: int) -> str:
    sim = cluster(6, seed, latency=LogNormal(median=0.001, sigma=0.5))
    sim.after(2.0, sim.crash, "n1")
    sim.after(4.0, sim.pause_for, "n2", 1.0)
    sim.after(15.0, sim.restart, "n1")
    sim.run_for(25.0)
    return sim.digest()


def test_same_seed_same_run_other_seed_other_run():
    first = scripted_run(SEED)
    assert scripted_run(SEED) == first, f"seed {SEED}: two runs differ"
    assert scripted_run(SEED + 1) != first, f"seeds {SEED} and {SEED + 1} gave the same run"


def test_string_hashing_does_not_leak_into_the_run():
    # set and dict order of str keys changes with PYTHONHASHSEED; a core that iterates one
    # without sorting would give another run in another process
    code = ("import sys; from tests.unit.test_simulator import scripted_run; "
            f"print(scripted_run({SEED}))")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": h}, check=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                              ).stdout.strip() for h in ("1", "2")}
    assert digests == {scripted_run(SEED)}, f"seed {SEED}: digests differ across hash seeds"


def test_a_crash_is_detected_by_every_node():
    sim = cluster(8)
    sim.crash("n3")
    sim.run_for(20.0)
    assert held_by_all(sim, "n3", "dead"), \
        f"seed {SEED}: {sim_analysis.states_now(sim, 'n3')}"
    (d,) = sim_analysis.detections(sim)
    assert d.all_s is not None and not d.missing, f"seed {SEED}: {d}"
    assert sim_analysis.false_dead(sim) == [], f"seed {SEED}"


def test_a_process_crash_is_detected_through_refused_connections():
    sim = cluster(8)
    sim.crash("n3", process=True)
    sim.run_for(20.0)
    assert held_by_all(sim, "n3", "dead"), f"seed {SEED}: {sim_analysis.states_now(sim, 'n3')}"
    assert sim.dropped["refused"] > 0, f"seed {SEED}: no peer was refused"


def test_a_restarted_node_is_alive_again_everywhere():
    sim = cluster(6)
    sim.crash("n2")
    sim.run_for(20.0)
    sim.restart("n2")
    sim.run_until_converged(timeout=30.0)
    assert sim_analysis.false_dead(sim) == [], f"seed {SEED}"


def test_an_agent_restarted_after_a_leave_is_alive_everywhere_then_declared_dead():
    # A role re-exec with every seed down: the new process (incarnation 0) reaches no one
    # itself; the peers listing it "left" must find it, and then detect its crash.
    sim = cluster(8)
    for seed in ("n0", "n1", "n2"):
        sim.crash(seed)
    sim.run_for(20.0)
    sim.leave("n6")
    sim.run_for(0.5)
    sim.restart("n6")
    sim.run_until_converged(timeout=3.0, step=0.1)
    sim.run_for(30.0)
    assert held_by_all(sim, "n6", "alive"), f"seed {SEED}: {sim_analysis.states_now(sim, 'n6')}"
    sim.crash("n6")
    sim.run_for(15.0)
    assert held_by_all(sim, "n6", "dead"), f"seed {SEED}: {sim_analysis.states_now(sim, 'n6')}"


def test_a_3s_pause_is_not_declared_dead():
    sim = cluster(8)
    for i in range(8):  # every node once, one at a time
        sim.at(sim.now + 1.0 + 8.0 * i, sim.pause_for, sim.names[i], 3.0)
    sim.run_for(70.0)
    false = sim_analysis.false_dead(sim)
    assert false == [], f"seed {SEED}: {len(false)} false dead verdicts, first {false[:3]}"
    assert sim.converged(), f"seed {SEED}: {sim.convergence_gap()}"
    assert sum(f.kind == "pause" for f in sim.faults) == 8


def test_messages_to_a_paused_node_wait_for_it():
    sim = cluster(4)
    node = sim.nodes["n1"]
    sim.pause("n1")
    before = node.received
    sim.run_for(2.0)
    assert node.received == before and node.inbox, f"seed {SEED}: nothing queued while paused"
    queued = len(node.inbox)
    sim.resume("n1")
    assert node.received == before + queued and not node.inbox


def test_a_partition_splits_the_view_and_healing_joins_it():
    sim = cluster(10)
    minority = ["n0", "n1", "n2"]
    majority = [n for n in sim.names if n not in minority]
    sim.partition([minority, majority])
    sim.run_for(40.0)
    for side, other in ((minority, majority), (majority, minority)):
        for subject in other:
            assert held_by_all(sim, subject, "dead", side), \
                f"seed {SEED}: {subject} as seen from its far side: " \
                f"{[sim.state_of(o, subject) for o in side]}"
    sim.heal()
    sim.run_until_converged(timeout=90.0)
    refuted = [n for n in sim.names
               if (sim_analysis.own_incarnation(sim, n) or 0) > 0]
    assert refuted, f"seed {SEED}: alive again without any node refuting its death"


def test_ten_percent_loss_gives_no_dead_verdict():
    sim = cluster(10, loss=0.10)
    sim.run_for(180.0)
    false = sim_analysis.false_dead(sim)
    assert false == [], f"seed {SEED}: {len(false)} false dead verdicts, first {false[:3]}"
    assert sim.dropped["lost"] > 0
