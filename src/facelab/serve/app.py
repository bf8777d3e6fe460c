"""The HTTP API of `facelab serve`: verification and identification over a Recognizer and a
Gallery (the endpoints and their limits are listed in facelab.serve's docstring).

Every endpoint is `async`: photos are decoded on worker threads, embedded by the batcher's
thread and searched on the gallery's thread, so the event loop never runs the model or SQLite.
"""

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from facelab import __version__
from facelab.jsonfile import strict_json
from facelab.model import CHECKPOINT_NAME
from facelab.recognize.gallery import Gallery
from facelab.recognize.recognizer import Recognizer
from facelab.serve.answers import (
    check_name,
    face_json,
    identified_json,
    label,
    match_json,
    source_name,
)
from facelab.serve.errors import ApiError, install_handlers
from facelab.serve.service import Limits, Service
from facelab.serve.uploads import Upload, read_form

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
API_KEY_HEADER = "X-API-Key"


def create_app(recognizer: Recognizer, gallery_dir: str | Path, api_key: str | None = None,
               limits: Limits | None = None) -> FastAPI:
    """The service's FastAPI app: `recognizer` embeds, the gallery in `gallery_dir` (created if
    missing; one made by another model is refused with a FacelabError) stores identities.

    api_key: when given, POST/DELETE /gallery/{name}, GET /gallery and POST /identify require it
    (header X-API-Key or Authorization: Bearer); /, /static, /health, /docs, /embed and /verify
    stay open. The gallery is opened here, and closed with the batcher when the app shuts down
    (its lifespan): one app serves once.
    """
    limits = limits or Limits()
    service = Service(recognizer, gallery_dir, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(service.close)
        log.info("stopped: queued photos served, gallery %s closed", service.gallery_dir)

    app = FastAPI(title="facelab", version=__version__, lifespan=lifespan,
                  description="Face verification and identification (facelab serve).")
    app.state.service = service
    install_handlers(app, _server_paths(service.gallery_dir, Path(recognizer.source)))
    guard = [Depends(_key_check(api_key))] if api_key else []
    _page_routes(app)
    _face_routes(app, service)
    _gallery_routes(app, service, guard)
    return app


def _server_paths(*paths: Path) -> list[str]:
    """The paths no answer may show, as messages may write them: absolute, and as given when
    that has a folder in it (a bare name such as `g` would hide every letter g)."""
    hide = [str(p.resolve()) for p in paths]
    return hide + [str(p) for p in paths if len(p.parts) > 1]


def _key_check(api_key: str) -> object:
    """The dependency that refuses a request without the key (401), in constant time."""
    expected = api_key.encode("utf-8")
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    async def check(key: Annotated[str | None, Security(header)],
                    token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
                    ) -> None:
        given = key if key is not None else token.credentials if token is not None else ""
        # headers arrive as Latin-1 text: back to their bytes, the UTF-8 of a non-ASCII key
        if not hmac.compare_digest(given.encode("latin-1", "replace"), expected):
            raise ApiError(401, f"missing or wrong API key (header {API_KEY_HEADER} or "
                           "Authorization: Bearer)", {"WWW-Authenticate": "Bearer"})

    return check


def _form_doc(*fields: str, many: bool = False) -> dict:
    """OpenAPI description of a multipart body (read by uploads.read_form, not by FastAPI)."""
    binary = {"type": "string", "format": "binary"}
    props = {f: {"type": "array", "items": binary} if many else binary for f in fields}
    schema = {"type": "object", "properties": props, "required": list(fields)}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": schema}}}}


def _one(form: dict[str, list[Upload]], field: str) -> Upload:
    """The one upload of `field`; 400 when it is missing or given twice."""
    got = form.get(field, [])
    if not got:
        others = f" (the form has: {', '.join(sorted(form))})" if form else ""
        raise ApiError(400, f"{field}: missing multipart field {field!r}{others}")
    if len(got) > 1:
        raise ApiError(400, f"{field}: give one photo, got {len(got)}")
    return got[0]


def _model_name(source: str) -> str:
    """The model's file or folder name (the server's paths stay private): runs/demo -> demo."""
    path = Path(source)
    return path.parent.name if path.name == CHECKPOINT_NAME else path.name


def _page_routes(app: FastAPI) -> None:
    """GET / (the web page, static/index.html) and /static/ (its files)."""
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        if not (STATIC / "index.html").is_file():
            raise ApiError(404, "no web page installed")
        return FileResponse(STATIC / "index.html")


def _face_routes(app: FastAPI, service: Service) -> None:
    """GET /health, POST /embed, POST /verify."""
    rec, limit = service.recognizer, service.limits.max_upload
    fingerprint = json.loads(strict_json(rec.fingerprint, indent=None))

    @app.get("/health")
    async def health() -> JSONResponse:
        """The model (name, fingerprint, decision threshold: a squared L2 distance, and the
        validation set it was chosen on) and the gallery's counts of identities and photos."""
        people = await service.gallery(Gallery.identities)
        return JSONResponse({
            "status": "ok", "model": _model_name(rec.source), "fingerprint": fingerprint,
            "threshold": rec.threshold, "threshold_set": rec.threshold_set,
            "identities": len(people), "photos": sum(p["photos"] for p in people)})

    @app.post("/embed", openapi_extra=_form_doc("image"))
    async def embed(request: Request, crops: bool = False) -> JSONResponse:
        """Every face of the photo in field `image`, main face first: box [x0, y0, x1, y1],
        detector score, 5 landmarks [[x, y]] (eyes, nose, mouth corners) and the L2-normalised
        embedding; `crops=true` adds each aligned crop as a JSON data URL. No face: `faces` is
        empty. 413 past --max-upload-mb or the pixel limit."""
        form = await read_form(request, limit, "image")
        photo = await service.decode("image", _one(form, "image").data)
        (faces,) = await service.faces([photo])
        return JSONResponse({"faces": [face_json(f, embedding=True, crop=crops)
                                       for f in faces]})

    @app.post("/verify", openapi_extra=_form_doc("a", "b"))
    async def verify(request: Request) -> JSONResponse:
        """Same person? The main faces of photos `a` and `b`: cosine `score`, squared L2
        `distance` (2 - 2 cos), the model's `threshold`, `same` (distance < threshold), and
        both faces with their aligned crops. 422 when a photo shows no face."""
        threshold = service.threshold()
        form = await read_form(request, limit, "a, b")
        uploads = [_one(form, "a"), _one(form, "b")]
        photos = await asyncio.gather(*(service.decode(u.field, u.data) for u in uploads))
        found = await service.faces(list(photos))
        for upload, faces in zip(uploads, found, strict=True):
            if not faces:
                raise ApiError(422, f"{upload.field}: no face found")
        a, b = found[0][0], found[1][0]
        return JSONResponse({**match_json(a, b, threshold), "threshold_set": rec.threshold_set,
                             "a": face_json(a, crop=True), "b": face_json(b, crop=True)})


def _gallery_routes(app: FastAPI, service: Service, guard: list) -> None:
    """POST/DELETE /gallery/{name}, GET /gallery, POST /identify."""
    limit = service.limits.max_upload

    @app.post("/gallery/{name:path}", dependencies=guard,
              openapi_extra=_form_doc("images", many=True))
    async def enrol(name: str, request: Request) -> JSONResponse:
        """Add the main face of each photo of field `images` (repeat the field for several) to
        identity `name`, created if new: all photos or none (422 naming the first without a
        face). `photos`: the identity's photos now; `several`: the photos that showed more than
        one face (the main one was added)."""
        name = check_name(name, enrolling=True)
        form = await read_form(request, limit, "images")
        uploads = form.get("images", [])
        if not uploads:
            raise ApiError(400, "images: give at least one photo in multipart field 'images'")
        photos = await asyncio.gather(*(service.decode(label(u, i), u.data)
                                        for i, u in enumerate(uploads)))
        items, several = [], []
        for i, (upload, faces) in enumerate(zip(uploads, await service.faces(list(photos)),
                                                strict=True)):
            if not faces:
                raise ApiError(422, f"{label(upload, i)}: no face found; nothing was added to "
                               f"{name!r}")
            source = source_name(upload) or f"images[{i}]"
            if len(faces) > 1:
                several.append(source)
            items.append((source, faces[0].embedding))
        total = await service.gallery(_add, name, items)
        return JSONResponse({"name": name, "added": len(items), "photos": total,
                             "several": several})

    @app.delete("/gallery/{name:path}", dependencies=guard)
    async def remove(name: str) -> JSONResponse:
        """Remove identity `name` with its photos; `removed`: how many photos. 404 when the
        gallery has no such identity."""
        name = check_name(name)
        removed = await service.gallery(_remove, name)
        if removed is None:
            raise ApiError(404, f"name: no identity {name!r} in the gallery")
        return JSONResponse({"name": name, "removed": removed})

    @app.get("/gallery", dependencies=guard)
    async def identities() -> JSONResponse:
        """Every identity and its number of photos, sorted by name."""
        people = await service.gallery(Gallery.identities)
        return JSONResponse({"identities": [{"name": p["name"], "photos": p["photos"]}
                                            for p in people]})

    @app.post("/identify", dependencies=guard, openapi_extra=_form_doc("image"))
    async def identify(request: Request, k: Annotated[int, Query(ge=1, le=100)] = 5
                       ) -> JSONResponse:
        """Who is each face of the photo in field `image`? Per face (main first): box, score,
        landmarks, `identity` (the best identity when its cosine `similarity` to the face is
        above 1 - threshold / 2, i.e. they would verify as the same person; else "unknown"),
        and the `k` best `candidates` by cosine. 422 when the photo shows no face."""
        threshold = service.threshold()
        form = await read_form(request, limit, "image")
        photo = await service.decode("image", _one(form, "image").data)
        (faces,) = await service.faces([photo])
        if not faces:
            raise ApiError(422, "image: no face found")
        queries = np.stack([f.embedding for f in faces])  # [F, d]
        found = await service.gallery(Gallery.search, queries, k)
        min_score = 1.0 - threshold / 2.0  # distance < T  <=>  cos > 1 - T / 2
        return JSONResponse({"faces": [identified_json(f, c, min_score)
                                       for f, c in zip(faces, found, strict=True)],
                             "threshold": threshold})


def _add(gallery: Gallery, name: str, items: list) -> int:
    """On the gallery's thread: add the photos, then the identity's number of photos."""
    gallery.add(name, items)
    return next(p["photos"] for p in gallery.identities() if p["name"] == name)


def _remove(gallery: Gallery, name: str) -> int | None:
    """On the gallery's thread: remove `name`, returning its number of photos; None when the
    gallery has no such identity."""
    photos = {p["name"]: p["photos"] for p in gallery.identities()}
    if name not in photos:
        return None
    gallery.remove(name)
    return photos[name]
