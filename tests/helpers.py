"""Shared test fixtures: where the shared fixtures are, a tiny synthetic corpus, and running the CLI."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
# One compute thread per training subprocess: its loader workers need the other core, and oversubscribing
# 2 cores makes every step several times slower.
SUBPROCESS_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def shared_file(*parts) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (the shared fixtures live beside the repository)")
    return path


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run ``trainSpeakerNet.py`` in a subprocess; returns the CompletedProcess (text)."""
    environment = {**os.environ, **SUBPROCESS_ENV, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "trainSpeakerNet.py"), *map(str, args)], cwd=cwd or REPO,
                          check=False, capture_output=True, text=True, timeout=timeout, env=environment)


def free_port() -> int:
    """A TCP port free on this machine now, for a local MASTER_PORT (tests, benchmarks)."""
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]
