"""`facelab serve`: face verification and identification over HTTP (FastAPI + uvicorn), on top
of facelab.recognize's Recognizer and Gallery. Install with `pip install 'facelab[serve]'`.

    facelab serve MODEL --gallery DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]
                  [--max-upload-mb 20] [--max-batch 16] [--max-wait-ms 5]

Endpoints (JSON answers; photos as multipart/form-data fields; OpenAPI docs at /docs):

    GET    /                the web page (static/index.html), its files under /static/
    GET    /health          {status, model, fingerprint, threshold, threshold_set, identities,
                            photos}
    POST   /embed           field image, ?crops=true -> {faces: [{box, score, landmarks,
                            embedding[, crop]}]}, main face first ([] for none)
    POST   /verify          fields a, b -> {score, distance, threshold, same, threshold_set,
                            a: face, b: face} (faces with their aligned crops)
    POST   /gallery/{name}  field images (repeated) -> {name, added, photos, several}
    DELETE /gallery/{name}  -> {name, removed}
    GET    /gallery         -> {identities: [{name, photos}]}
    POST   /identify        field image, ?k=1..100 (5) -> {faces: [{box, score, landmarks,
                            identity, similarity, candidates: [{name, score}]}], threshold}

Errors are `{"error": "<one line>"}`: 400 a missing field, a photo that is not an image, a bad
name or query; 401 a missing or wrong API key; 404 an unknown route or identity; 413 an upload
past --max-upload-mb (all photos of a request together) or a photo past 40 megapixels; 422 a
photo without a face where one is needed; 503 /verify and /identify of a model without a
threshold. No answer holds a traceback or a path of the server.

Security: the server listens on 127.0.0.1 unless --host says otherwise. With --api-key (or the
FACELAB_API_KEY environment variable), the gallery's endpoints (POST, DELETE and GET /gallery)
and /identify require the key, in header X-API-Key or Authorization: Bearer; /, /static,
/health, /docs, /embed and /verify stay open (they keep nothing). Uploads are held in memory,
never written to disk; the gallery folder is the only thing the server writes.

Concurrency: photos of concurrent requests are embedded together (batcher.Batcher: up to
--max-batch photos, waiting at most --max-wait-ms after the first); gallery reads and writes
run one at a time on the gallery's own thread. A server killed at any moment (kill -9) leaves
every enrolment it answered 200 in the gallery, and the gallery consistent.

From Python (tests, benchmarks):

    from facelab import Recognizer
    from facelab.serve import Limits, create_app, run_in_thread

    app = create_app(Recognizer.load("runs/demo"), "gallery/", api_key=None,
                     limits=Limits(max_upload_mb=20, max_batch=16, max_wait_ms=5))
    with run_in_thread(app) as url:  # http://127.0.0.1:<free port>, serving until the block ends
        ...                          # e.g. httpx.post(f"{url}/embed", files={"image": jpeg})

`create_app(recognizer, gallery_dir, api_key=None, limits=None) -> FastAPI` opens the gallery at
once; the app closes it when it shuts down, so one app serves once. `app.state.service.batcher
.sizes` holds the sizes of the recent batches.
"""

from facelab.serve.app import create_app
from facelab.serve.server import bind, check_port, run_in_thread, serve
from facelab.serve.service import Limits

__all__ = ["Limits", "bind", "check_port", "create_app", "run_in_thread", "serve"]
