import os
import tempfile

# Scratch caches for matplotlib / inductor so tests never write to $HOME (ASSETS.md).
_scratch = tempfile.mkdtemp(prefix="facelab-test-cache-")
for var in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR"):
    os.environ.setdefault(var, os.path.join(_scratch, var.lower()))
os.environ.setdefault("MPLBACKEND", "Agg")
