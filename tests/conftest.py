"""Suite-wide settings: headless SDL, and one torch thread (these models are tiny: on a shared
2-core machine a second intra-op thread spins and runs many times slower)."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
