"""`facelab serve` killed by SIGKILL while enrolling: after a restart on the same gallery, every
enrolment the server answered 200 is there with its photos, and the gallery opens cleanly.

The server runs as the real command (`python -m facelab serve ... --port 0`) in a child process,
its API key from FACELAB_API_KEY. A client thread enrols photos in a loop and records each
answered enrolment; the child is killed after a few of them, mid-request. The gallery's test hook
holds each write transaction open a while, so that the kill often lands inside one (where it
lands does not change what must hold). Readiness is polled on /health, never slept for.
"""

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from facelab.recognize.gallery import TEST_PAUSE_ENV, Gallery

KEY = "kill-test-key"
NAMES = 3  # identities enrolled in turn: each gets several photos
START_TIMEOUT_S = 120


class Server:
    """A `facelab serve` child process, its stderr lines collected by a thread."""

    def __init__(self, run, gallery, pause: str | None = None) -> None:
        env = {**os.environ, "FACELAB_API_KEY": KEY}
        env.pop(TEST_PAUSE_ENV, None)
        if pause:
            env[TEST_PAUSE_ENV] = pause
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facelab", "serve", str(run), "--gallery", str(gallery),
             "--port", "0", "--precision", "fp32"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._ready()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def _ready(self) -> str:
        """The URL the child logged, once /health answers there."""
        deadline, url = time.monotonic() + START_TIMEOUT_S, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {''.join(self.lines)}")
            found = [m for line in self.lines
                     for m in re.findall(r"http://127\.0\.0\.1:\d+", line)]
            url = url or (found[0] if found else None)
            if url is not None:
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"the server did not start: {''.join(self.lines)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)


def _enrol_until_dead(url: str, photo: bytes, acked: dict, refused: list) -> None:
    """Enrol `photo` under person-0, person-1, ... in turn until the server is gone; acked:
    {name: photos the answer counted}."""
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
        for i in range(10_000):
            name = f"person-{i % NAMES}"
            try:
                r = client.post(f"/gallery/{name}", files={"images": (f"{i}.jpg", photo)})
            except httpx.TransportError:
                return
            if r.status_code == 200:
                acked[name] = r.json()["photos"]
            else:
                refused.append(r.text)


def test_kill_9_while_enrolling_loses_no_acknowledged_photo(model, rec, pictures, tmp_path):
    run, gallery, photo = model[0], tmp_path / "gallery", pictures["astronaut.jpg"]
    servers = []
    try:
        servers.append(Server(run, gallery, pause="transaction:0.3"))
        acked, refused = {}, []
        client = threading.Thread(target=_enrol_until_dead,
                                  args=(servers[0].url, photo, acked, refused))
        client.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while sum(acked.values()) < 4 and client.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.uniform(0.1, 0.4))  # somewhere in the next enrolment
        servers[0].proc.send_signal(signal.SIGKILL)
        client.join(60)
        assert servers[0].proc.wait(30) == -signal.SIGKILL
        assert sum(acked.values()) >= 4 and not refused, (acked, refused)

        with Gallery.open(gallery, rec.fingerprint, create=False) as g:  # opens cleanly
            direct = {p["name"]: (p["photos"], p["embeddings"]) for p in g.identities()}
        assert all(photos == embeddings for photos, embeddings in direct.values())

        servers.append(Server(run, gallery))
        headers = {"X-API-Key": KEY}
        listed = httpx.get(f"{servers[1].url}/gallery", headers=headers,
                           timeout=60).json()["identities"]
        counts = {p["name"]: p["photos"] for p in listed}
        assert counts == {name: photos for name, (photos, _) in direct.items()}
        for name, photos in acked.items():
            # the enrolment in flight when the server died may have committed: one more
            assert counts[name] in (photos, photos + 1), (name, photos, counts)
        assert sum(counts.values()) <= sum(acked.values()) + 1
        found = httpx.post(f"{servers[1].url}/identify", headers=headers, timeout=60,
                           files={"image": pictures["astronaut2.jpg"]}).json()["faces"]
        assert found[0]["identity"].startswith("person-")
        # SIGTERM: a graceful stop (uvicorn >= 0.30 then ends by the signal, as callers expect)
        servers[1].proc.send_signal(signal.SIGTERM)
        assert servers[1].proc.wait(60) in (0, -signal.SIGTERM)
        servers[1].stop()
        assert any("gallery" in line and "closed" in line for line in servers[1].lines)
    except BaseException:
        for i, server in enumerate(servers):  # shown by pytest with the failure
            print(f"--- server {i}:\n{''.join(server.lines)}")
        raise
    finally:
        for server in servers:
            server.stop()
