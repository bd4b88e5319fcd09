"""The trainer's side of the checkpoint protocol: crash-safe commit, pruning, async snapshots,
the merge for a new world size, and the loop position saved in every checkpoint."""
