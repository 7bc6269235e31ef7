"""Tamper evidence: RFC 9162 Merkle trees, signed checkpoints, digest chains, validation."""
