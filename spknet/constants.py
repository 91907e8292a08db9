"""Constants every part of the library shares, in a module that imports nothing, so that any module (a plugin
included) can import them without importing the package's ``__init__`` and what it loads on demand."""

SAMPLE_RATE = 16000      # Hz: every audio file, the front end and the tools
