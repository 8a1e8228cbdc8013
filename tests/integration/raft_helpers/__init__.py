"""Helpers for the Raft integration tests: a node runner process and a cluster harness."""
