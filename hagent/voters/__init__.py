"""The Raft voter set as a managed, self-healing thing (docs/voters.md).

- ``policy``: the autopilot's rules, sans-IO: which one change (add or remove a voter), if
  any, the leader should make now, and why;
- ``autopilot``: the leader's loop that builds the policy's view every second and hands its
  decisions to the changer;
- ``changer``: carries out one membership change at a time through the log.
"""
