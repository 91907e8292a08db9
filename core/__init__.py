"""The SpeakerNet library behind the top-level commands: evaluation, checkpoints, training, files, plugins."""

SAMPLE_RATE = 16000      # Hz: every audio file, the front end and the tools
