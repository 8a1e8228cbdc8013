"""Non-voters reach the log through the voters over CURVE-secured ZeroMQ (docs/nonvoters.md).

- ``protocol``: the msgpack wire format, sans-IO;
- ``keys``: CURVE key pair files (``hagent keygen``) and Z85 public keys;
- ``server``: the voter side (ROUTER, CURVE server, ZAP allow-list);
- ``client``: the non-voter side (one DEALER per voter, futures by request id, failover).
"""
