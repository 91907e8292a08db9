"""The SpeakerNet library behind the top-level commands: evaluation, checkpoints, training, files, plugins."""
