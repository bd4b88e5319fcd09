"""The checkpoint store (spec.checkpointStore, docs/trainer.md "Checkpoint store"): an S3-compatible
bucket that mirrors output_dir/checkpoint/. `upload` sends each local commit after it is made,
`download` brings this rank's files of the newest step complete in the store to local disk before
the start resolves, `view` reads the store as `respawn_protocol.resolve` reads a directory."""
