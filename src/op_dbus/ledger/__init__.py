"""The audit log ("blockchain" in the commands): append-only blocks, Merkle tree, signed checkpoints."""
