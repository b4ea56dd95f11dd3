import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests import their fixture builders from here


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread while a module's tiny models run: on a shared CPU a busy second core makes
    OpenMP wait-spin. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
