"""The test harness itself: a worker that dies mid-run (the OOM killer) fails the run within
seconds; it never leaves the controller waiting on a test no worker runs."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DYING = """import os, signal, time

def test_dies():
  time.sleep(1)
  os.kill(os.getpid(), signal.SIGKILL)
""" + "".join(f"\n\ndef test_other_{i}():\n  time.sleep(0.3)\n" for i in range(8))


def test_a_worker_killed_mid_run_fails_the_run_instead_of_hanging(tmp_path):
  """pytest -n 2 with this project's settings, on a module one of whose tests kills its worker:
  the run ends (the other worker's tests finished), fails, and names the crash."""
  (tmp_path / "test_dies.py").write_text(DYING)
  args = [
    sys.executable,
    "-m",
    "pytest",
    "-n",
    "2",
    "-c",
    os.path.join(ROOT, "pyproject.toml"),
    "--rootdir",
    str(tmp_path),
  ]
  start = time.monotonic()
  out = subprocess.run(
    [*args, "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 1, out.stdout[-3000:]
  assert "crashed while running 'test_dies.py::test_dies'" in out.stdout, out.stdout[-3000:]
  assert time.monotonic() - start < 120
