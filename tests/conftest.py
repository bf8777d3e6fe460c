import atexit
import os
import shutil
import tempfile

# Scratch caches for matplotlib / inductor so tests never write to $HOME (ASSETS.md); removed at exit.
_scratch = tempfile.mkdtemp(prefix="facelab-test-cache-")
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
for var in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR"):
    os.environ.setdefault(var, os.path.join(_scratch, var.lower()))
os.environ.setdefault("MPLBACKEND", "Agg")
