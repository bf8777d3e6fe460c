"""Process pools forked by facelab (synthetic faces, image checks, alignment) after OpenCV's thread
pool has run in the parent must not hang: with OMP_NUM_THREADS above the core count, a forked worker's
cv2.setNumThreads(1) blocked for ever on the condition variables it inherited (facelab.io.fork_safe_cv2)."""

import subprocess
import sys

SCRIPT = """
import cv2, numpy as np
from facelab.data.synthetic.pool import parallel_map
img = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
for _ in range(25):
    cv2.GaussianBlur(img, (15, 15), 3)  # OpenCV's own thread pool works, then waits
    assert list(parallel_map(abs, [-1, -2, -3, -4], workers=2)) == [1, 2, 3, 4]
print("done")
"""


def test_forked_pools_after_opencv_threads_do_not_hang():
    env = {"OMP_NUM_THREADS": "3", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                         env=env)
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr[-2000:]
