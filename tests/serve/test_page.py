"""The web page of `facelab serve` (static/index.html + app.js) in headless Chromium, driven by
Playwright against the real app on a free port: what the page shows must be what the API answers
for the same files, and the boxes must be drawn where the API says the faces are."""

import shutil

import cv2
import httpx
import numpy as np
import pytest
from tests.references.float_paths import DIST_TOL

from facelab.serve import create_app, run_in_thread

SETUP = "make setup-browser (Debian's chromium) and pip install 'playwright>=1.40,<2'"
CHROMIUM = shutil.which("chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright missing: {SETUP}")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium on PATH: {SETUP}")

KEY = "s3cret-key"
VIEWPORT = {"width": 1280, "height": 800}
BOX_BGR = (255, 229, 0)  # app.js COLOURS.box #00e5ff, as OpenCV reads the screenshot


@pytest.fixture(scope="module")
def url(model, tmp_path_factory):
    _, rec = model
    app = create_app(rec, tmp_path_factory.mktemp("page") / "gallery", api_key=KEY)
    with run_in_thread(app) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    # Playwright drives the system's chromium: its own browser downloads are not needed
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.goto(f"{url}/")
    yield tab
    context.close()


def _file(pictures, name, mime="image/jpeg"):
    return {"name": name, "mimeType": mime, "buffer": pictures[name]}


def _post(url, path, files, **kwargs):
    """The API's own answer: (status, JSON) of a multipart POST of {field: (name, bytes)}."""
    r = httpx.post(f"{url}{path}", files=files, timeout=30, **kwargs)
    return r.status_code, r.json()


def _printed(value):
    """Every 4-decimal text of a value computed again within float32 rounding (another batch of
    the batcher may move the last bits), as app.js prints it."""
    return {f"{v:.4f}" for v in (value - DIST_TOL, value, value + DIST_TOL)}


def _on_box(shot, page, img, box):
    """The share of the columns along the middle half of the top edge of `box` (photo pixels),
    mapped to where the photo is displayed, that show the box colour in the screenshot (within
    a pixel of the edge: the 3-pixel line is anti-aliased at fractional positions)."""
    x, y, width, natural = page.eval_on_selector(
        img, "e => { const r = e.getBoundingClientRect(); "
             "return [r.x, r.y, r.width, e.naturalWidth]; }")
    s = width / natural
    x0, y0, x1 = (x + box[0] * s, y + box[1] * s, x + box[2] * s)
    row = round(y0)
    cols = np.arange(round(x0 + 0.25 * (x1 - x0)), round(x0 + 0.75 * (x1 - x0)))
    edge = shot[row - 1 : row + 2, cols].astype(int)  # [3, N, 3] BGR
    return (np.abs(edge - BOX_BGR).max(axis=2) < 40).any(axis=0).mean()


def test_verify_shows_the_api_answer_boxes_and_crops(page, url, pictures):
    page.set_input_files("#file-a", _file(pictures, "astronaut.jpg"))
    page.set_input_files("#file-b", _file(pictures, "hopper.jpg"))
    page.click("#verify-btn")
    page.wait_for_selector("#result", state="visible")
    status, api = _post(url, "/verify", {"a": ("astronaut.jpg", pictures["astronaut.jpg"]),
                                         "b": ("hopper.jpg", pictures["hopper.jpg"])})
    assert status == 200, api
    assert page.inner_text("#decision") == ("same person" if api["same"] else "different people")
    for sel, key in (("#score", "score"), ("#distance", "distance")):
        assert page.inner_text(sel) in _printed(api[key]), (sel, api[key])
    assert page.inner_text("#threshold") == f"{api['threshold']:.4f}"
    assert api["threshold_set"] in page.inner_text("#threshold-set")
    assert page.is_hidden("#error")

    # the aligned crops are the API's JPEGs, decoded by the browser
    for side in "ab":
        assert page.get_attribute(f"#crop-{side}", "src") == api[side]["crop"]
        assert page.eval_on_selector(f"#crop-{side}", "e => e.complete && e.naturalWidth") > 0

    png = page.screenshot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape[:2] == (VIEWPORT["height"], VIEWPORT["width"])
    for side in "ab":
        # the box colour on the API's box, mapped to the displayed photo; not at the photo's
        # bottom-left corner, where no face is
        on_box = _on_box(shot, page, f"#img-{side}", api[side]["box"])
        assert on_box > 0.9, (side, on_box)
        assert _on_box(shot, page, f"#img-{side}", [0, 160, 30, 170]) < 0.1

    # a narrow screen: everything in one column, nothing wider than the window
    page.set_viewport_size({"width": 380, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 380
    assert page.is_visible("#decision")


def test_gallery_enrol_list_identify_and_delete(page, url, pictures):
    name = "Eileen Collins"
    page.click("#tab-gallery")
    # without the key the server refuses the list: the page says so, with the API's message
    page.wait_for_selector("#error", state="visible")
    refused = httpx.get(f"{url}/gallery", timeout=30)
    assert refused.status_code == 401
    assert refused.json()["error"] in page.inner_text("#error")

    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.fill("#enrol-name", name)
    page.set_input_files("#enrol-files", [_file(pictures, "astronaut.jpg"),
                                          _file(pictures, "astronaut2.jpg")])
    page.click("#enrol-btn")
    page.wait_for_selector("#identities li")
    listed = httpx.get(f"{url}/gallery", headers={"X-API-Key": KEY}, timeout=30).json()
    assert listed["identities"] == [{"name": name, "photos": 2}]
    assert page.inner_text("#identities .name") == name
    assert page.inner_text("#identities .count") == "2 photos"
    assert page.is_hidden("#error")

    page.set_input_files("#identify-file", _file(pictures, "astronaut.jpg"))
    page.click("#identify-btn")
    page.wait_for_selector("#identify-list li")
    status, api = _post(url, "/identify", {"image": ("astronaut.jpg", pictures["astronaut.jpg"])},
                        headers={"X-API-Key": KEY})
    assert status == 200 and api["faces"][0]["identity"] == name, api  # an enrolled photo
    shown = page.query_selector_all("#identify-list li")
    assert len(shown) == len(api["faces"])
    for li, face in zip(shown, api["faces"], strict=True):
        assert li.query_selector(".identity").inner_text() == face["identity"]
        printed = li.inner_text().split("similarity ")[1].split(" ")[0]
        assert printed in _printed(face["similarity"])

    # the key survives a reload (sessionStorage), and deleting empties the list
    page.reload()
    assert page.input_value("#api-key") == KEY
    page.click("#tab-gallery")
    page.wait_for_selector("#identities li")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"#identities button[aria-label='Delete {name}']")
    page.wait_for_selector("#identities li", state="detached")
    listed = httpx.get(f"{url}/gallery", headers={"X-API-Key": KEY}, timeout=30).json()
    assert listed["identities"] == [] and page.is_visible("#gallery-empty")


def test_an_upload_that_is_no_image_shows_the_api_error(page, url, pictures):
    notes = b"shopping list: milk, eggs\n"
    page.set_input_files("#file-a", {"name": "notes.txt", "mimeType": "text/plain",
                                     "buffer": notes})
    page.set_input_files("#file-b", _file(pictures, "hopper.jpg"))
    page.click("#verify-btn")
    page.wait_for_selector("#error", state="visible")
    status, api = _post(url, "/verify", {"a": ("notes.txt", notes),
                                         "b": ("hopper.jpg", pictures["hopper.jpg"])})
    assert status == 400
    assert api["error"] in page.inner_text("#error")
    assert page.is_hidden("#result")
