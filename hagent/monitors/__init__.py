"""Node-local monitors that turn what happens on this host into notifications.

- ``base``: the ``Monitor`` protocol, ``MonitorContext`` and the ``Outbox`` (bounded queue
  into the node's spooled submit path) every monitor uses;
- ``runner``: ``Monitors``, which builds the enabled monitors from ``[monitors]`` in
  hagent.toml, starts and stops them, and collects their ``status()``;
- ``metrics``: their counters as Prometheus metrics;
- ``process`` (with ``process_list``, ``process_scan``, ``process_lifecycle`` and
  ``commands``): masakari-processmonitor's job.

docs/monitors.md describes them for operators.
"""
