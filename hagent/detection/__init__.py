"""Host failure detection on the leader: gossip verdicts and fencing evidence become one
COMPUTE_HOST STOPPED notification per failure and one STARTED per recovery (docs/detection.md).

- ``policy``: the decisions, sans-IO (`HostEventPolicy`);
- ``service``: the asyncio shell that feeds it membership events, leadership, the log's
  incidents and lease verdicts, and carries out its proposals and fence driver calls.
"""
