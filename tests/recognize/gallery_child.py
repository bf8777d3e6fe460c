"""Child process of test_gallery.py: a server that forks gallery writers on request.

    python gallery_child.py

Imports facelab's gallery (torch and faiss come with it: seconds), prints "ready", then reads
commands from stdin, one JSON object a line: {"folder", "fingerprint", "tag", "calls", "pause"}.
For each it forks a writer and waits for it, then prints "exited PID CODE" (CODE: the exit
status, or minus the signal that ended it). It ends at EOF on stdin.

A writer prints "started TAG PID", opens the gallery (create=False) and makes CALLS add calls:
call j adds two photos "TAG-j-a-nN" and "TAG-j-b-nN" (N = 2 + j % 3 faces each, random unit
embeddings) to identity "TAG-id{j % 5}", printing "adding TAG-j-a-nN" before and "added
TAG-j-a-nN" after each call, and "done" at the end. The test SIGKILLs writers at chosen points;
"pause" sets the test hook FACELAB_GALLERY_TEST_PAUSE (gallery._test_pause) for the writer.

Writers are forked instead of started as new interpreters only to spare the seconds of imports
each time: the server forks before it has opened any database, index file or thread, and the
writer opens the gallery itself, as any process does (its own SQLite connection).
"""

import json
import os
import sys
import traceback
import zlib

import numpy as np

from facelab.recognize.gallery import TEST_PAUSE_ENV, Gallery


def write(command: dict) -> None:
    """The writer's loop (see the module docstring)."""
    tag, fingerprint = command["tag"], command["fingerprint"]
    dim = fingerprint["embedding_size"]
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    print(f"started {tag} {os.getpid()}", flush=True)
    with Gallery.open(command["folder"], fingerprint, create=False) as gallery:
        for j in range(command["calls"]):
            faces = 2 + j % 3
            photos = []
            for side in "ab":
                emb = rng.standard_normal((faces, dim))
                emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # [faces, dim] unit rows
                photos.append((f"{tag}-{j}-{side}-n{faces}", emb))
            print(f"adding {photos[0][0]}", flush=True)
            gallery.add(f"{tag}-id{j % 5}", photos)
            print(f"added {photos[0][0]}", flush=True)
    print("done", flush=True)


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.environ.pop(TEST_PAUSE_ENV, None)
                if command.get("pause"):
                    os.environ[TEST_PAUSE_ENV] = command["pause"]
                write(command)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"exited {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
