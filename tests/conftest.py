import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cnn_zoo(tmp_path_factory):
    """12 digits CNNs (checkpoints at steps 0 and 1), built once per test session; the
    tests only read it."""
    from zoo.build import build

    out = tmp_path_factory.mktemp("zoo") / "cnn"
    build("digits_cnn", 12, out, options={"steps": [0, 1]}, progress=False)
    return out


@pytest.fixture(scope="session")
def inr_zoo(tmp_path_factory):
    """20 digits SIRENs (one view, fitted 5 steps), built once per test session; read only."""
    from zoo.build import build

    out = tmp_path_factory.mktemp("zoo") / "inr"
    build("digits_siren", 20, out, options={"steps": [5], "views": 1}, progress=False)
    return out


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package), loaded once per
    test process under the name ``<name>_bench``."""
    key = f"{name}_bench"
    if key not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(key, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod   # dataclasses and pickling look the module up by name
        spec.loader.exec_module(mod)
    return sys.modules[key]
