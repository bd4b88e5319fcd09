"""`respawn`: what happened to a TrainingJob (`respawn status`) and its loss curve across restarts
(`respawn plot`)."""
