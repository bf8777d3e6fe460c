"use strict";
// The page of `facelab serve`: plain JS on the service's JSON API (no build step, no other host:
// it must work offline). Coordinates from the API are in the photo's pixels; each photo has a
// canvas laid over it, redrawn at the displayed size whenever that changes.

const $ = (selector) => document.querySelector(selector);
const KEY_STORE = "facelab-api-key";
const COLOURS = { box: "#00e5ff", landmark: "#ff1744", unknown: "#ffab00", text: "#000" };
const drawn = {}; // canvas selector -> faces drawn on it, kept to redraw on resize

function showError(message) {
  const el = $("#error");
  el.textContent = message || "";
  el.hidden = !message;
}

async function api(method, path, body) {
  const headers = {};
  const key = $("#api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status line says what happened
  }
  if (!response.ok) {
    const said = data && data.error ? data.error : response.statusText;
    throw new Error(`${said} (HTTP ${response.status})`);
  }
  if (data === null) throw new Error(`${path}: the server's answer is not JSON`);
  return data;
}

// Runs one user action: the error box cleared before, filled with what went wrong after.
async function act(button, work) {
  showError("");
  button.disabled = true;
  document.body.setAttribute("aria-busy", "true");
  try {
    await work();
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
    document.body.removeAttribute("aria-busy");
  }
}

const fixed = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(4));

// ---- photos and the faces drawn over them

function showPhoto(imgSel, canvasSel, file) {
  const img = $(imgSel);
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  draw(canvasSel, []);
  if (!file) {
    img.hidden = true;
    return;
  }
  img.onerror = () => { img.hidden = true; }; // not an image: the server will say so
  img.src = URL.createObjectURL(file);
  img.hidden = false;
}

function draw(canvasSel, faces) {
  drawn[canvasSel] = faces;
  const canvas = $(canvasSel);
  const img = canvas.parentElement.querySelector("img");
  const ctx = canvas.getContext("2d");
  if (!faces.length || img.hidden || !img.complete || !img.naturalWidth) {
    canvas.width = canvas.height = 0;
    if (faces.length && !img.hidden) img.addEventListener("load", redrawAll, { once: true });
    return;
  }
  const w = img.clientWidth, h = img.clientHeight, dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  canvas.style.width = `${w}px`;
  canvas.style.height = `${h}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const s = w / img.naturalWidth; // photo pixels -> displayed pixels
  for (const face of faces) {
    const [x0, y0, x1, y1] = face.box.map((v) => v * s);
    const colour = face.unknown ? COLOURS.unknown : COLOURS.box;
    ctx.lineWidth = 3;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = COLOURS.landmark;
    for (const [x, y] of face.landmarks || []) {
      ctx.beginPath();
      ctx.arc(x * s, y * s, 3, 0, 2 * Math.PI);
      ctx.fill();
    }
    if (face.label) {
      ctx.font = "bold 14px system-ui, sans-serif";
      const tw = ctx.measureText(face.label).width + 8;
      const ty = y0 >= 20 ? y0 - 20 : y1; // above the box, or below it at the photo's top
      ctx.fillStyle = colour;
      ctx.fillRect(x0, ty, tw, 20);
      ctx.fillStyle = COLOURS.text;
      ctx.fillText(face.label, x0 + 4, ty + 15);
    }
  }
}

function redrawAll() {
  for (const [sel, faces] of Object.entries(drawn)) draw(sel, faces);
}

// Drag and drop onto a zone sets its file input, as choosing the file would.
function dropZone(zone, input) {
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (!e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    input.dispatchEvent(new Event("change"));
  });
}

// ---- verify

async function verify() {
  const a = $("#file-a").files[0], b = $("#file-b").files[0];
  if (!a || !b) throw new Error("choose two photos, A and B");
  $("#result").hidden = true;
  const form = new FormData();
  form.append("a", a);
  form.append("b", b);
  const r = await api("POST", "/verify", form);
  draw("#canvas-a", [r.a]);
  draw("#canvas-b", [r.b]);
  for (const [sel, face] of [["#crop-a", r.a], ["#crop-b", r.b]]) {
    $(sel).hidden = !face.crop;
    if (face.crop) $(sel).src = face.crop;
  }
  const decision = $("#decision");
  decision.textContent = r.same ? "same person" : "different people";
  decision.className = r.same ? "same" : "different";
  $("#score").textContent = fixed(r.score);
  $("#distance").textContent = fixed(r.distance);
  $("#threshold").textContent = fixed(r.threshold);
  $("#threshold-set").textContent =
    r.threshold_set ? `(best accuracy on ${r.threshold_set})` : "(given)";
  $("#rule").textContent = `distance ${fixed(r.distance)} ${r.same ? "<" : "≥"} threshold ` +
    `${fixed(r.threshold)}: ${decision.textContent}`;
  $("#result").hidden = false;
}

// ---- gallery

async function refreshGallery() {
  const r = await api("GET", "/gallery");
  const list = $("#identities");
  list.replaceChildren();
  for (const { name, photos } of r.identities) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${photos} photo${photos === 1 ? "" : "s"}`;
    const del = document.createElement("button");
    del.className = "delete";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete ${name}`);
    del.addEventListener("click", () => act(del, () => removeIdentity(name)));
    li.append(label, " ", count, " ", del);
    list.append(li);
  }
  $("#gallery-empty").hidden = r.identities.length > 0;
  health(); // its counts changed with the gallery
}

function loadGallery() {
  showError("");
  refreshGallery().catch((e) => showError(e.message));
}

async function enrol() {
  const name = $("#enrol-name").value.trim();
  const files = [...$("#enrol-files").files];
  if (!name) throw new Error("give the person's name");
  if (!files.length) throw new Error(`choose one or more photos of ${name}`);
  const form = new FormData();
  for (const f of files) form.append("images", f);
  const r = await api("POST", `/gallery/${encodeURIComponent(name)}`, form);
  let status = `added ${r.added} photo${r.added === 1 ? "" : "s"} to ${r.name} ` +
    `(${r.photos} in all)`;
  if (r.several && r.several.length) {
    status += `; several faces in ${r.several.join(", ")}: the main one was kept`;
  }
  $("#enrol-status").textContent = status;
  await refreshGallery();
}

async function removeIdentity(name) {
  if (!window.confirm(`Delete ${name} and all their photos from the gallery?`)) return;
  const r = await api("DELETE", `/gallery/${encodeURIComponent(name)}`);
  $("#enrol-status").textContent = `removed ${r.name} (${r.removed} photos)`;
  await refreshGallery();
}

async function identify() {
  const file = $("#identify-file").files[0];
  if (!file) throw new Error("choose a photo to identify");
  const list = $("#identify-list");
  list.replaceChildren();
  const form = new FormData();
  form.append("image", file);
  const r = await api("POST", "/identify", form);
  const labelled = r.faces.map((f) => ({
    box: f.box,
    landmarks: f.landmarks,
    unknown: f.identity === "unknown",
    label: `${f.identity} ${fixed(f.similarity)}`,
  }));
  draw("#canvas-id", labelled);
  if (!r.faces.length) list.append(Object.assign(document.createElement("li"),
    { textContent: "no face found" }));
  r.faces.forEach((f, i) => {
    const li = document.createElement("li");
    li.className = f.identity === "unknown" ? "unknown" : "known";
    const who = document.createElement("strong");
    who.className = "identity";
    who.textContent = f.identity;
    const others = (f.candidates || []).map((c) => `${c.name} ${fixed(c.score)}`).join(", ");
    li.append(`face ${i + 1}: `, who, ` similarity ${fixed(f.similarity)}`,
      others ? ` (candidates: ${others})` : "");
    list.append(li);
  });
}

// ---- tabs, health, wiring

function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
  }
  redrawAll();
}

async function health() {
  try {
    const h = await api("GET", "/health");
    const where = h.threshold_set ? `best accuracy on ${h.threshold_set}` : "given";
    const threshold = h.threshold === null ? "no threshold" : `threshold ${fixed(h.threshold)} ` +
      `(${where})`;
    $("#health").textContent = `model ${h.model} · ${threshold} · ${h.identities} identities, ` +
      `${h.photos} photos`;
  } catch (e) {
    $("#health").textContent = `server not ready: ${e.message}`;
  }
}

function init() {
  const key = $("#api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, key.value));
  $("#key-form").addEventListener("submit", (e) => e.preventDefault()); // Enter: no reload
  key.addEventListener("change", () => { // the list may have been refused for want of the key
    if (!$("#panel-gallery").hidden) loadGallery();
  });

  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => { // arrow keys move between tabs (WAI-ARIA tabs)
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      next.focus();
      selectTab(next);
    });
  });
  $("#tab-gallery").addEventListener("click", loadGallery);

  for (const [fileSel, imgSel, canvasSel, zoneSel] of [
    ["#file-a", "#img-a", "#canvas-a", "#drop-a"],
    ["#file-b", "#img-b", "#canvas-b", "#drop-b"],
    ["#identify-file", "#img-id", "#canvas-id", "#drop-id"],
  ]) {
    const input = $(fileSel);
    input.addEventListener("change", () => {
      // a new photo: the answer about the last one no longer applies
      if (fileSel === "#identify-file") $("#identify-list").replaceChildren();
      else $("#result").hidden = true;
      showPhoto(imgSel, canvasSel, input.files[0]);
    });
    dropZone($(zoneSel), input);
  }
  // a photo dropped beside a zone would otherwise replace the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  window.addEventListener("resize", redrawAll);

  $("#verify-btn").addEventListener("click", (e) => act(e.currentTarget, verify));
  $("#identify-btn").addEventListener("click", (e) => act(e.currentTarget, identify));
  $("#enrol-form").addEventListener("submit", (e) => {
    e.preventDefault();
    act($("#enrol-btn"), enrol);
  });
  health();
}

document.addEventListener("DOMContentLoaded", init);
