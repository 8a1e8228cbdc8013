"""Recovery: the Raft leader recovers hosts, instances and processes through Nova."""
