"""Importing the library changes nothing global: matplotlib's backend and the warning filters stay the program's.

Each check runs in a fresh interpreter, where nothing of the library has been imported yet.
"""

import os
import subprocess
import sys

import numpy as np

from spknet.evaluation import write_plots
from tests.helpers import REPO, SUBPROCESS_ENV


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import sys\n{code}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **SUBPROCESS_ENV})


def test_importing_the_library_leaves_matplotlib_s_backend_and_the_warning_filters_alone():
    result = run_python("""
import warnings
import matplotlib
matplotlib.use("svg")
# the libraries' own filters, set when they are imported
import matplotlib.figure, numpy, scipy.signal, scipy.stats, sklearn.isotonic, sklearn.metrics, soundfile
import torch, torch.distributed.nn.functional, torchaudio
before = list(warnings.filters)
import spknet.calibration, spknet.distributed, spknet.evaluation, spknet.export, spknet.inference
import spknet.training.trainer
from spknet import load_embedder
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, warnings.filters == before)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "False", "True"]


def test_the_gather_s_deprecation_warning_is_silenced_only_around_the_gather():
    result = run_python("""
import warnings
import torch
import torch.distributed as dist
from spknet import distributed
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
warnings.simplefilter("error")                              # any warning that escapes fails the script
before = list(warnings.filters)
x = torch.ones(3, 2, requires_grad=True)
distributed.gather_with_grad(x, equal_sizes=True).sum().backward()
distributed.gather_with_grad(x, equal_sizes=False)
print(warnings.filters == before, x.grad.sum().item())
dist.destroy_process_group()
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "6.0"]


def test_plots_are_png_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    scores = rng.normal(size=400) + 2 * labels
    paths = write_plots(scores, labels, str(tmp_path), name="_x", eer=12.5)
    assert [os.path.basename(path) for path in paths] == ["det_x.png", "score_hist_x.png"]
    for path in paths:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(path) > 5000
