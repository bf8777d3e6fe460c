"""The HTTP API against the direct Python API, on real photos and a small model: every endpoint's
answer equals the Recognizer's and identify.py's (embeddings to DIST_TOL, decisions equal), and
every refusal is one line of JSON with its status, without a traceback or a server path."""

import asyncio
import base64
import tempfile
import threading

import httpx
import numpy as np
import pytest
import starlette.formparsers
from tests.references import photos
from tests.references.float_paths import DIST_TOL

from facelab.io import decode_image
from facelab.recognize import Gallery, Recognizer
from facelab.recognize.identify import enrol, identify
from facelab.serve import Limits, create_app, run_in_thread
from facelab.serve.errors import INTERNAL, ApiError, one_line
from facelab.serve.uploads import read_form

THRESHOLD = 1.0  # the model fixture's stored threshold (conftest.py)


@pytest.fixture(scope="module")
def client(rec, client_for, tmp_path_factory):
    with client_for(rec, tmp_path_factory.mktemp("gallery")) as c:
        yield c


def _refused(r, status: int, *texts: str, hidden: tuple = ()) -> str:
    """The error message of a refusal, checked: status, one line, no traceback nor path."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"], body
    message = body["error"]
    assert "\n" not in message and "Traceback" not in message and 'File "' not in message
    assert "/tmp" not in message and tempfile.gettempdir() not in message, message
    for secret in hidden:
        assert str(secret) not in message, message
    for text in texts:
        assert text in message, message
    return message


def _same_face(got: dict, face, crop: bool) -> None:
    np.testing.assert_allclose(got["box"], face.box, atol=1e-6)
    np.testing.assert_allclose(got["landmarks"], face.landmarks, atol=1e-6)
    assert got["score"] == pytest.approx(face.score, abs=1e-6)
    assert ("crop" in got) == crop
    if crop:
        head, data = got["crop"].split(",", 1)
        assert head == "data:image/jpeg;base64"
        pixels = decode_image(base64.b64decode(data), "crop")
        assert pixels.shape == face.crop.shape  # a JPEG of the aligned crop
        assert np.abs(pixels.astype(float) - face.crop).mean() < 4


# ---------------------------------------------------------------------------------- answers


def test_health_describes_the_model_and_counts_the_gallery(rec, client_for, tmp_path):
    with client_for(rec, tmp_path / "g") as c:
        r = c.get("/health")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "model": "run", "fingerprint": rec.fingerprint,
                            "threshold": THRESHOLD, "threshold_set": "val", "identities": 0,
                            "photos": 0}
        assert str(tmp_path) not in r.text
        assert c.get("/docs").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
        assert set(paths) == {"/health", "/embed", "/verify", "/gallery/{name}", "/gallery",
                              "/identify"}


@pytest.mark.parametrize("name", ["astronaut.jpg", "collage.png", "wall.jpg"])
def test_embed_gives_the_recognizers_faces(client, pictures, direct, name):
    crops = name == "collage.png"
    r = client.post("/embed", files={"image": (name, pictures[name])},
                    params={"crops": "true"} if crops else {})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == len(direct[name]) == {"wall.jpg": 0, "collage.png": 2}.get(name, 1)
    for got, face in zip(faces, direct[name], strict=True):
        assert set(got) == {"box", "score", "landmarks", "embedding"} | ({"crop"} if crops
                                                                         else set())
        _same_face(got, face, crop=crops)
        np.testing.assert_allclose(got["embedding"], face.embedding, atol=DIST_TOL)


@pytest.mark.parametrize("b", ["astronaut2.jpg", "hopper.jpg"])
def test_verify_decides_as_compare(client, rec, pictures, b):
    r = client.post("/verify", files={"a": pictures["astronaut.jpg"], "b": pictures[b]})
    assert r.status_code == 200, r.text
    got, match = r.json(), rec.compare(pictures["astronaut.jpg"], pictures[b])
    assert got["same"] is match.same is (b == "astronaut2.jpg")
    assert got["score"] == pytest.approx(match.score, abs=DIST_TOL)
    assert got["distance"] == pytest.approx(match.distance, abs=DIST_TOL)
    assert (got["threshold"], got["threshold_set"]) == (THRESHOLD, "val")
    for side, face in zip("ab", match.faces, strict=True):
        assert set(got[side]) == {"box", "score", "landmarks", "crop"}
        _same_face(got[side], face, crop=True)


def test_enrol_identify_remove_as_the_direct_gallery(client, rec, pictures, tmp_path):
    files = [("images", ("hopper.jpg", pictures["hopper.jpg"])),
             ("images", ("collage.png", pictures["collage.png"]))]
    r = client.post("/gallery/Grace Hopper", files=files)
    assert r.json() == {"name": "Grace Hopper", "added": 2, "photos": 2,
                        "several": ["collage.png"]}
    r = client.post("/gallery/astro", files={"images": ("a.jpg", pictures["astronaut.jpg"])})
    assert r.json() == {"name": "astro", "added": 1, "photos": 1, "several": []}
    listed = client.get("/gallery").json()["identities"]
    assert {"name": "astro", "photos": 1} in listed
    assert {"name": "Grace Hopper", "photos": 2} in listed

    with Gallery.open(tmp_path / "direct", rec.fingerprint) as gallery:
        enrol(rec, gallery, "Grace Hopper", [pictures["hopper.jpg"], pictures["collage.png"]])
        enrol(rec, gallery, "astro", [pictures["astronaut.jpg"]])
        want = identify(rec, gallery, [pictures["astronaut2.jpg"]], top_k=2)
    r = client.post("/identify", files={"image": pictures["astronaut2.jpg"]}, params={"k": 2})
    got = r.json()
    assert got["threshold"] == THRESHOLD and len(got["faces"]) == len(want) == 1
    face, record = got["faces"][0], want[0]
    assert face["identity"] == record["identity"] == "astro"
    assert face["similarity"] == pytest.approx(record["score"], abs=DIST_TOL)
    assert [c["name"] for c in face["candidates"]] == [n for n, _ in record["candidates"]]
    np.testing.assert_allclose([c["score"] for c in face["candidates"]],
                               [s for _, s in record["candidates"]], atol=DIST_TOL)
    np.testing.assert_allclose(face["box"], record["box"], atol=0.06)  # identify rounds

    assert client.delete("/gallery/Grace Hopper").json() == {"name": "Grace Hopper",
                                                             "removed": 2}
    _refused(client.delete("/gallery/Grace Hopper"), 404, "no identity 'Grace Hopper'")
    assert "Grace Hopper" not in str(client.get("/gallery").json())


def test_identify_answers_unknown_below_the_threshold(rec, client_for, pictures, tmp_path):
    with client_for(rec, tmp_path / "g") as c:
        r = c.post("/identify", files={"image": pictures["hopper.jpg"]})  # empty gallery
        assert r.json()["faces"][0] | {"box": 0, "landmarks": 0, "score": 0} == {
            "box": 0, "landmarks": 0, "score": 0, "identity": "unknown", "similarity": None,
            "candidates": []}
        c.post("/gallery/astro", files={"images": pictures["astronaut.jpg"]})
        face = c.post("/identify", files={"image": pictures["hopper.jpg"]}).json()["faces"][0]
        # astronaut vs hopper: distance 1.01 >= 1.0, so no match though she is the best
        assert face["identity"] == "unknown" and face["candidates"][0]["name"] == "astro"
        assert face["similarity"] < 1 - THRESHOLD / 2


def test_enrol_is_all_or_nothing(client, pictures):
    files = [("images", ("a.jpg", pictures["astronaut.jpg"])),
             ("images", ("wall.jpg", pictures["wall.jpg"]))]
    _refused(client.post("/gallery/nobody", files=files), 422, "images[1] (wall.jpg): no face",
             "nothing was added")
    assert "nobody" not in str(client.get("/gallery").json())


# ---------------------------------------------------------------------------------- refusals


def test_bad_uploads_name_the_field(client, pictures):
    wall = pictures["wall.jpg"]
    _refused(client.post("/embed", files={"photo": wall}), 400, "image: missing", "has: photo")
    _refused(client.post("/embed", files=[("image", wall), ("image", wall)]), 400, "image:",
             "got 2")
    _refused(client.post("/embed", json={"image": "x"}), 400, "multipart/form-data")
    _refused(client.post("/embed", files={"image": b"not an image"}), 400,
             "image: not an image")
    _refused(client.post("/embed", files={"image": b""}), 400, "image: empty")
    _refused(client.post("/verify", files={"a": wall}), 400, "b:")
    _refused(client.post("/verify", files={"a": wall, "b": b"\xff\xd8\xff"}), 400,
             "b: not an image")
    _refused(client.post("/gallery/x", files={"image": wall}), 400, "images:")
    _refused(client.post("/gallery/x", files=[("images", ("a.jpg", wall)),
                                              ("images", ("b.png", b"GIF89"))]), 400,
             "images[1] (b.png): not an image")
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc"
    _refused(client.post("/embed", content=body,
                         headers={"content-type": "multipart/form-data; boundary=xyz"}),
             400, "image:", "cut short")


def test_photos_without_a_face_are_422(client, pictures):
    wall = pictures["wall.jpg"]
    _refused(client.post("/verify", files={"a": wall, "b": wall}), 422, "a: no face found")
    _refused(client.post("/identify", files={"image": wall}), 422, "image: no face found")
    assert client.post("/embed", files={"image": wall}).json() == {"faces": []}


def test_uploads_past_the_limits_are_413(rec, client_for, pictures, tmp_path):
    photo = pictures["astronaut.jpg"]  # 192 x 192 pixels, ~20 kB
    with client_for(rec, tmp_path / "g", limits=Limits(max_upload_mb=10_000 / 2**20)) as c:
        _refused(c.post("/embed", files={"image": photo}), 413, "upload larger than the limit")
        chunks = (photo[i : i + 4096] for i in range(0, len(photo), 4096))  # chunked: no length
        _refused(c.post("/embed", content=chunks,
                        headers={"content-type": "multipart/form-data; boundary=b"}), 413)
        _refused(c.post("/embed", files={"image": pictures["hopper.jpg"][:9000]}), 400,
                 "image: not an image")  # under the byte limit: read, then refused
        small = pictures["wall.jpg"]
        assert c.post("/embed", files={"image": small}).status_code == 200
    with client_for(rec, tmp_path / "g", limits=Limits(max_pixels=30_000)) as c:
        _refused(c.post("/embed", files={"image": photo}), 413, "image: 192x192 pixels",
                 "0.03 megapixels")


def test_the_body_is_read_no_further_than_the_limit():
    """read_form stops taking chunks once past the limit: at most one chunk beyond it."""
    taken = []

    class Request:
        headers = {"content-type": "multipart/form-data; boundary=b"}

        async def stream(self):
            yield b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n'
            for i in range(1000):
                taken.append(i)
                yield b"x" * 1000

    with pytest.raises(ApiError) as e:
        asyncio.run(read_form(Request(), 10_500, "image"))
    assert e.value.status == 413 and len(taken) == 11  # 53 + 11 * 1000 bytes > 10_500


def test_uploads_stay_in_memory(client, pictures, monkeypatch):
    """A part of 3 MB (starlette's parser would spool anything past 1 MB to a file) is held in
    memory: the temporary-file makers fail if called."""

    def no_files(*args, **kwargs):
        raise AssertionError("an upload was written to disk")

    for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_files)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", no_files)
    files = {"image": pictures["wall.jpg"], "padding": ("pad.bin", bytes(3 * 2**20))}
    assert client.post("/embed", files=files).json() == {"faces": []}


@pytest.mark.parametrize("name, why", [("%20", "must not be empty"), ("", "must not be empty"),
                                       ("a%2Fb", "path separator"), ("a%5Cb", "path separator"),
                                       ("x" * 101, "longer than 100"),
                                       ("a%01b", "control characters"),
                                       ("unknown", "'unknown' is what /identify answers")])
def test_bad_names_are_400(client, pictures, name, why):
    _refused(client.post(f"/gallery/{name}", files={"images": pictures["wall.jpg"]}), 400,
             "name:", why)
    if name != "unknown":  # a CLI-made identity named so can still be removed
        _refused(client.delete(f"/gallery/{name}"), 400, "name:", why)


def test_bad_queries_routes_and_methods(client, pictures):
    wall = pictures["wall.jpg"]
    for k in ("0", "101", "abc"):
        _refused(client.post("/identify", params={"k": k}, files={"image": wall}), 400,
                 "query k:")
    _refused(client.post("/embed", params={"crops": "maybe"}, files={"image": wall}), 400,
             "query crops:")
    _refused(client.get("/nowhere"), 404)
    _refused(client.get("/static/nothing.js"), 404)
    _refused(client.get("/embed"), 405)
    _refused(client.put("/gallery"), 405)


def test_failures_are_500_without_traceback_or_path(rec, client_for, pictures, tmp_path):
    gallery = tmp_path / "g"
    with client_for(rec, gallery, raise_server_exceptions=False) as c:
        service = c.app.state.service

        class Broken:
            def embed_stream(self, photos, batch_size):
                raise RuntimeError(f"model exploded in {gallery}")

        service.batcher.recognizer = Broken()
        assert _refused(c.post("/embed", files={"image": pictures["wall.jpg"]}), 500) == INTERNAL
        service.batcher.recognizer = rec  # the worker survived the failure
        assert c.post("/embed", files={"image": pictures["wall.jpg"]}).status_code == 200
        service._thread.submit(service._gallery.close).result()  # the database is gone
        _refused(c.get("/gallery"), 500, "gallery: <server path>: the gallery is closed",
                 hidden=(gallery,))


def test_messages_lose_server_paths_and_stay_one_line():
    hide = ["/srv/data/gallery", "runs/demo"]
    assert one_line("/srv/data/gallery/gallery.sqlite: locked", hide) == (
        "<server path>/gallery.sqlite: locked")
    assert one_line("runs/demo/checkpoint.pt: bad\nsecond line", hide) == (
        "<server path>/checkpoint.pt: bad second line")
    assert one_line("cannot read /home/x/y.jpg (denied)") == "cannot read <server path> (denied)"
    kept = "name: 'unknown' is what /identify answers; multipart/form-data; http://h/a/b"
    assert one_line(kept) == kept
    assert len(one_line("x" * 1000)) == 300


def test_a_model_without_threshold_cannot_decide(client_for, pictures, model, tmp_path):
    run = photos.model_run(tmp_path / "bare")  # trained without validation sets
    rec = Recognizer.load(run / "checkpoint.pt", precision="fp32")
    with client_for(rec, tmp_path / "g") as c:
        health = c.get("/health").json()
        assert (health["threshold"], health["threshold_set"], health["model"]) == (None, None,
                                                                                   "bare")
        wall = pictures["wall.jpg"]
        _refused(c.post("/verify", files={"a": wall, "b": wall}), 503, "--threshold")
        _refused(c.post("/identify", files={"image": wall}), 503, "--threshold")


# ---------------------------------------------------------------------------------- API key


def test_api_key_guards_the_gallery_and_identify(rec, client_for, pictures, tmp_path):
    wall, photo = pictures["wall.jpg"], pictures["astronaut.jpg"]
    with client_for(rec, tmp_path / "g", api_key="s3cret-ключ") as c:
        key = {"X-API-Key": "s3cret-ключ".encode()}  # a header holds bytes: the key's UTF-8
        for method, url, kwargs in [("post", "/gallery/ann", {"files": {"images": photo}}),
                                    ("delete", "/gallery/ann", {}), ("get", "/gallery", {}),
                                    ("post", "/identify", {"files": {"image": wall}})]:
            for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                            {"Authorization": "Basic czNjcmV0"}):
                r = c.request(method, url, headers=headers, **kwargs)
                _refused(r, 401, "API key")
                assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/gallery/ann", files={"images": photo}, headers=key).status_code == 200
        bearer = {"Authorization": b"Bearer " + key["X-API-Key"]}
        assert c.get("/gallery", headers=bearer).json() == {"identities": [
            {"name": "ann", "photos": 1}]}
        # open: they keep nothing
        assert c.get("/health").json()["identities"] == 1
        assert c.get("/").status_code in (200, 404)
        assert c.post("/embed", files={"image": wall}).status_code == 200
        assert c.post("/verify", files={"a": wall, "b": wall}).status_code == 422
        assert c.delete("/gallery/ann", headers=bearer).json() == {"name": "ann", "removed": 1}


def test_the_page_is_served_or_missing_as_json(client):
    r = client.get("/")
    if r.status_code == 200:
        assert r.headers["content-type"].startswith("text/html")
    else:
        _refused(r, 404, "no web page")


# ---------------------------------------------------------------------------------- server


def test_concurrent_requests_are_batched_over_http(rec, pictures, direct, tmp_path):
    """A real server on a free port: 6 clients at once, their photos embedded in batches of
    several, each answer still the Recognizer's."""
    app = create_app(rec, tmp_path / "g", limits=Limits(max_batch=8, max_wait_ms=300))
    names = ["astronaut.jpg", "hopper.jpg", "astronaut2.jpg"] * 2
    answers, start = {}, threading.Barrier(len(names))

    def post(i: int, url: str) -> None:
        start.wait()
        r = httpx.post(f"{url}/embed", files={"image": pictures[names[i]]}, timeout=60)
        answers[i] = r

    with run_in_thread(app) as url:
        assert url.startswith("http://127.0.0.1:")
        threads = [threading.Thread(target=post, args=(i, url)) for i in range(len(names))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        sizes = list(app.state.service.batcher.sizes)
    assert max(sizes) > 1 and sum(sizes) == len(names), sizes
    for i, name in enumerate(names):
        got = answers[i].json()["faces"]
        np.testing.assert_allclose([f["embedding"] for f in got],
                                   [f.embedding for f in direct[name]], atol=DIST_TOL)
    with pytest.raises(httpx.TransportError):  # stopped with the block
        httpx.get(f"{url}/health", timeout=2)
