import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# numba's on-disk cache (librosa's yin, cqt and zero-crossing kernels are cached guvectorize
# functions) is not safe to fill from several processes at once: two workers compiling the same
# kernel into a cold cache can leave a pair of files from different processes, and the next load
# segfaults (numba/numba#10128). A fresh CI venv starts cold, so each test process compiles into a
# cache of its own. xdist's workers inherit the controller's environment, so a directory this file
# made in the controller is replaced in each worker (it was shared, and CI crashed a worker in
# yin). A directory the user set is kept. Set before anything imports numba.
_OURS = "CMAV_TESTS_OWN_NUMBA_CACHE"
if "NUMBA_CACHE_DIR" not in os.environ or os.environ.get(_OURS) == os.environ["NUMBA_CACHE_DIR"]:
    _process = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.environ["NUMBA_CACHE_DIR"] = os.environ[_OURS] = tempfile.mkdtemp(prefix=f"cmav-tests-numba-{_process}-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests import their fixture builders from here


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread while a module's tiny models run: on a shared CPU a busy second core makes
    OpenMP wait-spin. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
