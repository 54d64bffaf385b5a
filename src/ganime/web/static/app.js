// GANime page: pick or drop a sketch, paint colour hints over it, send both to /api/colorize.
// Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);

const PALETTE = [
  ["skin", "#f6d5c3"], ["blush", "#f29ac2"], ["red", "#e0453a"], ["orange", "#f39a3d"],
  ["blonde", "#f2d16b"], ["brown hair", "#7a4a2a"], ["green", "#4caf50"], ["sky blue", "#8fd3f4"],
  ["blue", "#3a6fe0"], ["purple", "#8e5cc4"], ["grey", "#9e9e9e"], ["black", "#222222"], ["white", "#ffffff"],
];
const MAX_UNDO = 20;
// Each undo step is a full copy of the hint canvas (4 bytes a pixel): 20 of a 4096x4096 sketch held 1.3 GB.
const MAX_UNDO_BYTES = 256 * 2 ** 20;

const state = {
  file: null,          // the sketch File as picked (sent unchanged)
  format: null,        // its format by content ("jpeg", "png", "webp" or null), for its EXIF orientation
  stem: "sketch",
  models: [],
  limits: null,
  painted: false,      // any hint stroke on the canvas
  eraser: false,
  undo: [],            // [{data: ImageData, painted}]
  drawing: false,
  last: null,
  resultUrl: null,
  sketchUrl: null,
  picks: 0,           // sketches picked so far (a slow decode of an older pick is dropped)
  job: 0,             // bumped by each Colorize and each new sketch: an older request's answer is dropped
};

const canvas = $("hints");
const ctx = canvas.getContext("2d");

function setState(s) { document.body.dataset.state = s; }

function showNotice(msg) {
  $("notice").textContent = msg || "";
  $("notice").hidden = !msg;
}

function showError(msg) {
  const el = $("error");
  el.textContent = msg;
  el.hidden = !msg;
  if (msg) setState("error");
}

// Controls that edit text keep Ctrl+Z and Ctrl+V for themselves; the page's own inputs (sliders, the colour
// picker, the model menu) have no use for them.
const TEXT_INPUTS = "textarea, input:not([type]), input[type=text], input[type=search], input[type=number], "
                    + "input[type=url], input[type=email], input[type=password], input[type=tel]";
const editsText = (el) => el.isContentEditable || el.matches(TEXT_INPUTS);

function currentModel() {
  return state.models.find((m) => m.name === $("method").value) || null;
}

// ---- server info ------------------------------------------------------------------------------
async function loadServerInfo() {
  try {
    const [health, models] = await Promise.all([
      fetch("/api/health").then((r) => r.json()),
      fetch("/api/models").then((r) => r.json()),
    ]);
    state.limits = health.limits;
    state.models = models.models;
    const sel = $("method");
    sel.replaceChildren();
    for (const m of models.models) {
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = m.description ? `${m.name} (${m.description})` : m.name;
      opt.selected = m.name === models.default;
      sel.append(opt);
    }
    $("server-status").textContent = `GANime ${health.version} · ${health.models.length} model(s) on ${health.device}`;
    onMethodChange();
  } catch (e) {
    $("server-status").textContent = "Cannot reach the GANime server. Is `ganime serve` running?";
    showError(`Cannot load the server's models: ${e.message}`);
  }
}

function onMethodChange() {
  const m = currentModel();
  const hints = !!(m && m.hints);
  $("hint-tools").disabled = !hints;
  $("hint-tools").classList.toggle("off", !hints);
  canvas.classList.toggle("off", !hints);
  $("method-note").textContent = m && !hints ? "this model takes no colour hints" : "";
  $("style-group").hidden = !(m && m.needs_style);
  // Result options: colour flattening for models with a colour layer, the paper for every colorizer;
  // each model starts from its own server-side settings.
  const colorizer = !!(m && m.kind === "colorizer");
  $("result-options").hidden = !colorizer;
  const flat = colorizer && typeof m.flatten === "number";
  $("flatten-group").hidden = !flat;
  if (flat) {
    // 0-10 px, or up to the model's own setting when that is higher (ganime serve --flatten 12)
    $("flatten").max = String(Math.max(10, Math.ceil(m.flatten)));
    setFlatten(m.flatten);
  }
  $("paper").checked = colorizer && m.background === "paper";
  updateButtons();
}

function setFlatten(v) {
  $("flatten").value = String(v);
  $("flatten-value").textContent = $("flatten").value;
}

function updateButtons() {
  const m = currentModel();
  const needStyle = m && m.needs_style && !$("style-file").files.length;
  $("colorize").disabled = !state.file || !m || needStyle || document.body.dataset.state === "working";
  $("undo").disabled = state.undo.length === 0;
}

// ---- EXIF orientation -------------------------------------------------------------------------
// Browsers differ in whether they turn an image as its EXIF orientation tag says (headless Chromium
// does for JPEG and PNG, not for WebP); the server turns it, as `ganime colorize` does, unless the
// request says the pixels as stored were shown. Found once per format from a 2x1 sample tagged
// "turn 90 degrees": shown 1 pixel wide where the browser turns it.
const ORIENTATION_SAMPLES = {
  jpeg: "/9j/4AAQSkZJRgABAQAAAQABAAD/4QAiRXhpZgAATU0AKgAAAAgAAQESAAMAAAABAAYAAAAAAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/wAALCAABAAIBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAAB//EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AQH//2Q==",
  png: "iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAIAAAB7QOjdAAAAGmVYSWZNTQAqAAAACAABARIAAwAAAAEABgAAAAAAANZnS2kAAAAPSURBVHicY/z//z8DAwMADv8C/7jFnpkAAAAASUVORK5CYII=",
  webp: "UklGRlIAAABXRUJQVlA4WAoAAAAIAAAAAQAAAAAAVlA4TBEAAAAvAQAAAAfQ//73v/+BiOh/AABFWElGGgAAAE1NACoAAAAIAAEBEgADAAAAAQAGAAAAAAAA",
};
const turnsByTag = Object.fromEntries(Object.entries(ORIENTATION_SAMPLES).map(([format, b64]) => [format,
  new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img.naturalWidth === 1);
    img.onerror = () => resolve(true);  // cannot tell: the server's default
    img.src = `data:image/${format};base64,${b64}`;
  })]));

function imageFormat(bytes) {  // by content: a dropped file's type can be empty or wrong
  const b = new Uint8Array(bytes, 0, Math.min(12, bytes.byteLength));
  const text = (i, n) => String.fromCharCode(...b.subarray(i, i + n));
  if (b[0] === 0xff && b[1] === 0xd8) return "jpeg";
  if (b[0] === 0x89 && text(1, 3) === "PNG") return "png";
  if (text(0, 4) === "RIFF" && text(8, 4) === "WEBP") return "webp";
  return null;
}

// ---- the sketch -------------------------------------------------------------------------------
async function loadSketch(file) {
  showError("");
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image (${file.type}).`);
    return;
  }
  if (state.limits && file.size > state.limits.max_upload_bytes) {
    const mb = (state.limits.max_upload_bytes / 1048576).toFixed(1);
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; this server accepts up to ${mb} MB.`);
    return;
  }
  const pick = ++state.picks;  // only the latest pick is shown, however the decodes finish
  let format;
  try {
    // A copy in memory: Colorize sends the sketch shown even after the file is edited on disk (the
    // browser refuses to read a File changed since it was picked: "Failed to fetch").
    const bytes = await file.arrayBuffer();
    format = imageFormat(bytes);
    file = new File([bytes], file.name, { type: file.type });
  } catch (e) {
    if (pick === state.picks) showError(`${file.name} cannot be read (${e.message}).`);
    return;
  }
  const url = URL.createObjectURL(file);
  // Decoded off-screen first: a file that fails (unreadable, too many pixels) leaves the sketch shown,
  // its hints and the file that Colorize sends as they were.
  const img = new Image();
  img.onload = () => {
    const w = img.naturalWidth, h = img.naturalHeight;
    if (pick !== state.picks) {
      URL.revokeObjectURL(url);
      return;
    }
    if (state.limits && w * h > state.limits.max_pixels) {
      URL.revokeObjectURL(url);
      showError(`${file.name} is ${w}x${h} pixels; this server accepts up to ${state.limits.max_pixels.toLocaleString()} pixels.`);
      return;
    }
    if (state.sketchUrl) URL.revokeObjectURL(state.sketchUrl);
    state.sketchUrl = url;
    state.file = file;
    state.format = format;
    state.stem = file.name.replace(/\.[^.]*$/, "") || "sketch";
    // The hint canvas has the sketch's own resolution; CSS scales it for display.
    canvas.width = w;
    canvas.height = h;
    ctx.clearRect(0, 0, w, h);
    state.painted = false;
    state.undo = [];
    $("sketch").src = url;
    $("sketch").hidden = false;
    canvas.hidden = false;
    $("drop").classList.remove("empty");
    $("file-name").textContent = `${file.name} · ${w}×${h}`;
    clearResult();
    showNotice("");
    endWork();  // a request still out for the previous sketch is forgotten
    setState("ready");
    updateButtons();
  };
  img.onerror = () => {
    URL.revokeObjectURL(url);
    if (pick === state.picks) showError(`${file.name} is not a readable image.`);
  };
  img.src = url;
}

function clearResult() {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = null;
  $("result").hidden = true;
  $("result").removeAttribute("src");
  $("result-placeholder").hidden = false;
  $("result-stage").classList.add("empty");
  $("download").hidden = true;
}

// ---- painting hints ---------------------------------------------------------------------------
function canvasPoint(e) {
  const r = canvas.getBoundingClientRect();
  return { x: (e.clientX - r.left) * canvas.width / r.width, y: (e.clientY - r.top) * canvas.height / r.height,
           scale: canvas.width / r.width };
}

function pushUndo() {
  state.undo.push({ data: ctx.getImageData(0, 0, canvas.width, canvas.height), painted: state.painted });
  const bytes = 4 * canvas.width * canvas.height;
  while (state.undo.length > Math.max(1, Math.min(MAX_UNDO, Math.floor(MAX_UNDO_BYTES / bytes)))) state.undo.shift();
  updateButtons();
}

function strokeTo(p) {
  ctx.globalCompositeOperation = state.eraser ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = $("color").value;
  ctx.lineWidth = Number($("brush").value) * p.scale;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (state.last) {
    ctx.moveTo(state.last.x, state.last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
  } else {
    ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  state.last = p;
  if (!state.eraser) state.painted = true;
}

canvas.addEventListener("pointerdown", (e) => {
  if (canvas.classList.contains("off") || e.button !== 0) return;
  e.preventDefault();
  canvas.setPointerCapture(e.pointerId);
  pushUndo();
  state.drawing = true;
  state.last = null;
  strokeTo(canvasPoint(e));
});
canvas.addEventListener("pointermove", (e) => { if (state.drawing) strokeTo(canvasPoint(e)); });
for (const ev of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(ev, () => { state.drawing = false; state.last = null; });
}

function undo() {
  const prev = state.undo.pop();
  if (!prev) return;
  ctx.putImageData(prev.data, 0, 0);
  state.painted = prev.painted;
  updateButtons();
}

function clearHints() {
  if (!state.file) return;
  pushUndo();
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  state.painted = false;
}

function setEraser(on) {
  state.eraser = on;
  $("eraser").setAttribute("aria-pressed", String(on));
  canvas.classList.toggle("erasing", on);
}

function buildPalette() {
  for (const [name, hex] of PALETTE) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "swatch";
    b.title = name;
    b.setAttribute("aria-label", `Paint ${name} (${hex})`);
    b.style.backgroundColor = hex;  // CSSOM, allowed by the page's content security policy
    b.addEventListener("click", () => { $("color").value = hex; setEraser(false); });
    $("palette").append(b);
  }
}

// ---- colorize ---------------------------------------------------------------------------------
function canvasBlob() {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// The server refuses hints without a transparent pixel (an image flattened onto a background would hint
// every pixel); on a small sketch a few dabs of the brush can cover it all.
function hintsCoverAll() {
  const a = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < a.length; i += 4) if (a[i] <= 127) return false;
  return true;
}

async function colorize() {
  const m = currentModel();
  if (!state.file || !m) return;
  showError("");
  showNotice("");
  const job = ++state.job;
  setState("working");
  updateButtons();
  $("colorize").textContent = "Colouring…";
  $("result-stage").setAttribute("aria-busy", "true");
  try {
    const form = new FormData();
    form.append("image", state.file, state.file.name);
    form.append("method", m.name);
    if (m.hints && state.painted && hintsCoverAll()) {
      throw new Error("the hints cover the whole sketch; erase or undo some: hints are a few strokes where "
                      + "colours should go, and the model colours the rest");
    }
    if (m.hints && state.painted) form.append("hints", await canvasBlob(), "hints.png");
    if (m.needs_style) form.append("style", $("style-file").files[0]);
    // The sketch as shown: the pixels as stored where this browser ignores their EXIF orientation.
    if (state.format && !(await turnsByTag[state.format])) form.append("orientation", "stored");
    if (!$("result-options").hidden) form.append("background", $("paper").checked ? "paper" : "model");
    if (!$("result-options").hidden && !$("flatten-group").hidden) form.append("flatten", $("flatten").value);
    const r = await fetch("/api/colorize", { method: "POST", body: form });
    if (job !== state.job) return;
    if (!r.ok) {
      let msg = `${r.status} ${r.statusText}`;
      try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
      if (r.status === 503) msg += ` (retry in ${r.headers.get("Retry-After") || "a few"} s)`;
      throw new Error(msg);
    }
    showNotice(r.headers.get("X-Ganime-Warning") ? `Note: ${r.headers.get("X-Ganime-Warning")}.` : "");
    const blob = await r.blob();
    if (job !== state.job) return;
    clearResult();
    state.resultUrl = URL.createObjectURL(blob);
    const out = $("result");
    await new Promise((resolve, reject) => { out.onload = resolve; out.onerror = reject; out.src = state.resultUrl; });
    if (job !== state.job) return;
    out.hidden = false;
    $("result-placeholder").hidden = true;
    $("result-stage").classList.remove("empty");
    const dl = $("download");
    dl.href = state.resultUrl;
    dl.download = `${state.stem}-colored.png`;
    dl.hidden = false;
    dl.setAttribute("aria-disabled", "false");
    setState("done");
  } catch (e) {
    if (job === state.job) showError(`Colorize failed: ${e.message || e}`);
  } finally {
    if (job === state.job) endWork();
  }
}

function endWork() {
  state.job++;
  $("colorize").textContent = "Colorize";
  $("result-stage").setAttribute("aria-busy", "false");
  updateButtons();
}

// ---- wiring -----------------------------------------------------------------------------------
function init() {
  setState("idle");
  buildPalette();
  $("file").addEventListener("change", (e) => {
    loadSketch(e.target.files[0]);
    e.target.value = "";  // so that picking the same file again (edited meanwhile) loads it again
  });
  $("style-file").addEventListener("change", updateButtons);
  $("method").addEventListener("change", onMethodChange);
  $("brush").addEventListener("input", () => { $("brush-value").textContent = $("brush").value; });
  $("flatten").addEventListener("input", () => setFlatten($("flatten").value));
  $("color").addEventListener("input", () => setEraser(false));
  $("eraser").addEventListener("click", () => setEraser(!state.eraser));
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearHints);
  $("colorize").addEventListener("click", colorize);
  // Ctrl+Z undoes a stroke whichever control has the focus: painting leaves it where it was, often on the
  // brush slider or the colour picker just used.
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z" && !editsText(e.target)) { e.preventDefault(); undo(); }
  });
  const drop = $("drop");
  drop.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target === drop) { e.preventDefault(); $("file").click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) loadSketch(e.dataTransfer.files[0]);
  });
  // A file dropped elsewhere on the page is taken as the sketch too: left alone, the browser would leave
  // the page (and the hints painted on it) to show the file. File inputs keep their own drop.
  for (const ev of ["dragover", "drop"]) {
    document.addEventListener(ev, (e) => {
      if (e.defaultPrevented || e.target.matches("input[type=file]")) return;
      e.preventDefault();
      if (ev === "drop" && e.dataTransfer.files.length) loadSketch(e.dataTransfer.files[0]);
    });
  }
  // An image pasted from the clipboard (copied in a drawing program or a browser) is taken as the sketch,
  // whichever control has the focus (sliders, the colour picker); a paste into editable text stays text.
  document.addEventListener("paste", (e) => {
    if (editsText(e.target)) return;
    const items = e.clipboardData ? [...e.clipboardData.items] : [];
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    const blob = item && item.getAsFile();
    if (!blob) return;
    e.preventDefault();
    const ext = (blob.type.split("/")[1] || "png").replace("jpeg", "jpg").replace(/[^a-z0-9]/g, "");
    // Pasted images are unnamed ("image.png"): name it after the moment, for the download's name.
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
    loadSketch(new File([blob], `pasted-${stamp}.${ext}`, { type: blob.type }));
  });
  // A click on the empty panel opens the file picker; once a sketch is shown, clicks paint.
  drop.addEventListener("click", (e) => { if (drop.classList.contains("empty")) $("file").click(); });
  loadServerInfo();
  updateButtons();
}

init();
