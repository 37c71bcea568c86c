// The page of simlearn-serve: plain JavaScript, no build step, nothing loaded from elsewhere.
// Every API call sends the access token when the service has one (asked for on the page, or given as ?token=);
// images are fetched with it too and shown from blob: URLs.
"use strict";

const TOKEN_KEY = "simlearn-serve-token";
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
const MAX_CACHED_IMAGES = 2000;
// a result's name too long for its card is cut in the middle (the end, …_0017.png, tells files apart); to this many
// characters where its width is unknown
const MAX_NAME_CHARS = 22;

const state = {
  token: null,
  info: null,
  map: null,        // the /map answer, plus screen positions once drawn
  query: null,      // {kind: "upload", file} or {kind: "item", id}
  history: [],      // earlier queries, for the Back button
  results: [],
  shownK: null,     // the k of the results on the page (the box returns to it after a refused k)
  images: new Map(), // item id -> blob: URL
};

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.title = text; // the whole line, also where the box shows only part of it
  status.classList.toggle("error", isError);
}

// "a-very-long-file-name_0017.png" -> "a-very-lo…_0017.png": the start and the end, which tell files apart
function cutMiddle(chars, keep) {
  if (chars.length <= keep) return chars.join("");
  const tail = Math.ceil(keep / 2);
  return chars.slice(0, keep - tail).join("") + "…" + chars.slice(chars.length - tail).join("");
}

// the name in its element, cut in the middle to the most characters that fit its width
function fitName(element, text) {
  const chars = [...String(text)];
  element.textContent = chars.join("");
  if (!element.clientWidth) { // not laid out (hidden): a fixed length
    element.textContent = cutMiddle(chars, MAX_NAME_CHARS);
    return;
  }
  if (element.scrollWidth <= element.clientWidth) return;
  let fits = 1, tooMany = chars.length; // characters kept besides the "…"
  while (tooMany - fits > 1) {
    const keep = Math.floor((fits + tooMany) / 2);
    element.textContent = cutMiddle(chars, keep);
    if (element.scrollWidth <= element.clientWidth) fits = keep; else tooMany = keep;
  }
  element.textContent = cutMiddle(chars, fits);
}

function fitNames() {
  for (const name of document.querySelectorAll("#results .card .name")) fitName(name, name.title);
}

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-box").hidden = false;
    $("token").focus();
    throw new ApiError("this service needs its access token: enter it above.");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch (error) { /* not JSON */ }
    throw new ApiError(detail);
  }
  return response;
}

async function imageURL(id) {
  if (state.images.has(id)) return state.images.get(id);
  const blob = await (await api(`/items/${id}`)).blob();
  const url = URL.createObjectURL(blob);
  if (state.images.size >= MAX_CACHED_IMAGES) { // forget the oldest
    const [oldest, oldURL] = state.images.entries().next().value;
    state.images.delete(oldest);
    URL.revokeObjectURL(oldURL);
  }
  state.images.set(id, url);
  return url;
}

function pixelatedWhenSmall(img) {
  img.addEventListener("load", () => {
    if (img.naturalWidth && img.naturalWidth < 64) img.classList.add("pixelated");
  });
}

function imageElement(id, alt) {
  if (!state.info || !state.info.gallery.has_images) {
    const box = document.createElement("div");
    box.className = "noimage";
    box.textContent = "no image";
    return box;
  }
  const img = document.createElement("img");
  img.alt = alt;
  pixelatedWhenSmall(img);
  imageURL(id).then((url) => { img.src = url; }).catch(() => { img.alt = `${alt} (image unavailable)`; });
  return img;
}

// ---------------------------------------------------------------- searching

class KError extends Error {}

// the k in the box, checked as the service checks it: a whole number from 1 to max_k (an empty box is no k)
function currentK() {
  const box = $("k");
  const largest = parseInt(box.max, 10) || 100;
  const text = box.value.trim();
  const valid = `give a whole number from 1 to ${largest}`;
  if (box.validity && box.validity.badInput) throw new KError(`k is not a number: ${valid}.`);
  if (!text) throw new KError(`k is empty: ${valid}.`);
  if (!/^[0-9]+$/.test(text) || Number(text) < 1 || Number(text) > largest) {
    throw new KError(`k must be a whole number from 1 to ${largest}, not ${text.slice(0, 20)}.`);
  }
  return Number(text);
}

// after a refused search the box shows again the k of the results still on the page
function restoreK() {
  if (state.shownK !== null) $("k").value = String(state.shownK);
}

async function run(query, remember = true) {
  let k;
  try {
    k = currentK();
  } catch (error) {
    restoreK();
    setStatus(`${error.message} k is back to ${$("k").value}.`, true);
    return;
  }
  setStatus("searching…");
  let response;
  try {
    if (query.kind === "upload") {
      const form = new FormData();
      form.append("image", query.file, query.file.name || "image");
      form.append("k", String(k));
      response = await api("/search", { method: "POST", body: form });
    } else {
      response = await api(`/items/${query.id}/neighbours?k=${k}`);
    }
  } catch (error) {
    restoreK();
    setStatus(error.message, true);
    return;
  }
  const answer = await response.json();
  if (remember && state.query) state.history.push(state.query);
  $("back").disabled = state.history.length === 0;
  state.query = query;
  state.results = answer.results;
  state.shownK = answer.k;
  $("k").value = String(answer.k);
  showQuery(query, answer.query);
  showResults(answer);
  drawMap();
  const where = query.kind === "upload" ? "your image" : `item ${query.id}`;
  setStatus(`top ${answer.results.length} for ${where}`);
}

function searchUpload(file) {
  if (!file) return;
  run({ kind: "upload", file });
}

function searchItem(id) {
  run({ kind: "item", id });
}

function showQuery(query, described) {
  const box = $("query");
  box.replaceChildren();
  box.dataset.id = query.kind === "item" ? String(query.id) : "";
  let img;
  if (query.kind === "upload") {
    img = document.createElement("img");
    pixelatedWhenSmall(img);
    img.src = URL.createObjectURL(query.file);
    img.alt = "your image";
  } else {
    img = imageElement(query.id, `item ${query.id}`);
  }
  const what = document.createElement("div");
  what.className = "what";
  const title = document.createElement("b");
  title.textContent = query.kind === "upload" ? `Query: ${query.file.name || "your image"}` : `Query: item ${query.id}`;
  what.append(title);
  if (described && described.name) what.append(described.name);
  if (described && described.class_name !== null && described.class_name !== undefined) {
    what.append(document.createElement("br"), `class ${described.class_name}`);
  }
  if (described && described.fields) what.append(document.createElement("br"), fieldsText(described.fields));
  box.append(img, what);
}

// every label field of an item, e.g. "digit 3 · magnitude 3 · parity 1"
function fieldsText(fields) {
  return Object.entries(fields).map(([name, value]) => `${name} ${Array.isArray(value) ? value.join(",") : value}`)
    .join(" · ");
}

function showResults(answer) {
  const grid = $("results");
  grid.replaceChildren();
  let framed = false;
  for (const item of answer.results) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card";
    card.dataset.id = String(item.id);
    card.title = `search from item ${item.id}` + (item.fields ? ` (${fieldsText(item.fields)})` : "");
    if (item.same_class === true) card.classList.add("same");
    if (item.same_class === false) card.classList.add("other");
    framed = framed || item.same_class !== null;
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${item.rank}` + (item.class_name !== null ? ` · ${item.class_name}` : "");
    const name = document.createElement("span");
    name.className = "name";
    name.title = item.name;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `cos ${item.cosine.toFixed(3)} · ${item.angle_deg.toFixed(1)}°`;
    card.append(imageElement(item.id, `item ${item.id}`), rank, name, score);
    card.addEventListener("click", () => searchItem(item.id));
    grid.append(card);
    fitName(name, item.name); // once in the page: its width is known
  }
  $("frame-legend").hidden = !framed;
  $("results-title").textContent = `Top ${answer.results.length} (cosine similarity · angle)`;
}

// ---------------------------------------------------------------- the map

function classColour(code) {
  if (code < 0) return "#9aa0a6";
  if (code < PALETTE.length) return PALETTE[code];
  return `hsl(${(code * 137.508) % 360}, 65%, 45%)`;
}

function layoutMap() {
  const canvas = $("map");
  const m = state.map;
  const pad = 14;
  const size = canvas.clientWidth || 520;
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (let i = 0; i < m.ids.length; i++) {
    x0 = Math.min(x0, m.x[i]); x1 = Math.max(x1, m.x[i]);
    y0 = Math.min(y0, m.y[i]); y1 = Math.max(y1, m.y[i]);
  }
  const span = Math.max(x1 - x0, y1 - y0) || 1; // one scale for both axes: angles stay angles
  const scale = (size - 2 * pad) / span;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  m.px = m.x.map((x) => size / 2 + (x - cx) * scale);
  m.py = m.y.map((y) => size / 2 - (y - cy) * scale);
  m.row = new Map(m.ids.map((id, i) => [id, i]));
  m.size = size;
}

function drawMap() {
  const m = state.map;
  if (!m) return;
  const canvas = $("map");
  const ratio = window.devicePixelRatio || 1;
  if (m.size !== (canvas.clientWidth || 520)) layoutMap();
  canvas.width = m.size * ratio;
  canvas.height = m.size * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, m.size, m.size);
  const radius = m.ids.length > 5000 ? 1.5 : 3;
  for (let i = 0; i < m.ids.length; i++) {
    ctx.fillStyle = classColour(m.labels ? m.labels[i] : -1);
    ctx.beginPath();
    ctx.arc(m.px[i], m.py[i], radius, 0, 2 * Math.PI);
    ctx.fill();
  }
  const ring = (id, colour, r, width) => {
    const i = m.row.get(id);
    if (i === undefined) return;
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.arc(m.px[i], m.py[i], r, 0, 2 * Math.PI);
    ctx.stroke();
  };
  for (const item of state.results) ring(item.id, "#000", radius + 3, 1.5);
  if (state.query && state.query.kind === "item") ring(state.query.id, "#000", radius + 6, 3);
}

function nearestPoint(x, y, within = 10) {
  const m = state.map;
  let best = -1, bestDistance = within * within;
  for (let i = 0; i < m.ids.length; i++) {
    const d = (m.px[i] - x) ** 2 + (m.py[i] - y) ** 2;
    if (d <= bestDistance) { best = i; bestDistance = d; }
  }
  return best;
}

function canvasPoint(event) {
  const rect = $("map").getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}

function showMapInfo() {
  const m = state.map;
  const note = m.shown < m.total ? ` ${m.shown} of ${m.total} items shown (a fixed sample).` : "";
  const variance = m.explained_variance_ratio
    ? ` (${(100 * (m.explained_variance_ratio[0] + m.explained_variance_ratio[1])).toFixed(0)}% of the variance)`
    : "";
  $("map-note").textContent = `${m.projection}${variance}.${note} Click a point to see its neighbours.`;
  const legend = $("map-legend");
  legend.replaceChildren();
  m.classes.forEach((name, code) => {
    const entry = document.createElement("span");
    entry.textContent = name;
    entry.style.setProperty("--dot", classColour(code));
    legend.append(entry);
  });
}

// ---------------------------------------------------------------- start

async function load() {
  try {
    state.info = await (await api("/info")).json();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  $("token-box").hidden = true;
  const g = state.info.gallery;
  $("about").textContent = `${g.items} gallery items of ${g.source} · ${g.dim}-d embeddings · ` +
    `${state.info.model.checkpoint} on ${state.info.model.device}`;
  const k = $("k");
  k.max = String(state.info.max_k);
  k.value = String(state.info.k);
  state.shownK = state.info.k;
  setStatus("ready: drop or choose an image");
  try {
    state.map = await (await api("/map")).json();
    layoutMap();
    showMapInfo();
    drawMap();
  } catch (error) {
    setStatus(`the map could not be loaded: ${error.message}`, true);
  }
}

function setUp() {
  const params = new URLSearchParams(window.location.search);
  if (params.has("token")) { // keep it for this tab, out of the address bar and the history
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? `?${rest}` : ""));
  }
  state.token = sessionStorage.getItem(TOKEN_KEY);

  $("token-box").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    load();
  });
  $("file").addEventListener("change", (event) => searchUpload(event.target.files[0]));
  const dropzone = $("dropzone");
  dropzone.addEventListener("click", () => $("file").click());
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); }
  });
  // the whole page takes a dropped file
  document.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("over"); });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) searchUpload(file);
  });
  $("k").addEventListener("change", () => { if (state.query) run(state.query, false); });
  $("back").addEventListener("click", () => {
    const previous = state.history.pop();
    if (previous) run(previous, false);
    $("back").disabled = state.history.length === 0;
  });
  const canvas = $("map");
  canvas.addEventListener("click", (event) => {
    if (!state.map) return;
    const i = nearestPoint(...canvasPoint(event));
    if (i >= 0) searchItem(state.map.ids[i]);
  });
  canvas.addEventListener("mousemove", (event) => {
    if (!state.map) return;
    const i = nearestPoint(...canvasPoint(event));
    const m = state.map;
    canvas.title = i < 0 ? "" : `item ${m.ids[i]}` + (m.labels && m.labels[i] >= 0 ? ` · ${m.classes[m.labels[i]]}` : "");
  });
  window.addEventListener("resize", () => {
    fitNames();
    if (state.map) { layoutMap(); drawMap(); }
  });
  load();
}

// for tests and curious users: where an item is drawn on the map (CSS pixels from the canvas's top-left corner)
window.simlearn = {
  state,
  pointPosition(id) {
    const i = state.map ? state.map.row.get(id) : undefined;
    return i === undefined ? null : { x: state.map.px[i], y: state.map.py[i] };
  },
};

setUp();
