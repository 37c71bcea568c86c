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
  view: "search",   // the left panel: search, clusters or duplicates
  colour: "class",  // the map's colours: by class or by cluster
  highlight: [],    // items ringed on the map besides the results (the cluster or group shown)
  clusterItems: [], // the items of the cluster chosen in the Clusters view
  clusters: null,   // the /clusters answer, once asked for
  duplicates: null, // the /duplicates answer, once asked for
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
  for (const name of document.querySelectorAll(".card .name")) fitName(name, name.title);
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
  showView("search");
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

// one card per item, as a search result shows it: its image, a first line, its name and a score line; a click
// searches from it
function itemCard(item, first, score) {
  const card = document.createElement("button");
  card.type = "button";
  card.className = "card";
  card.dataset.id = String(item.id);
  card.title = `search from item ${item.id}` + (item.fields ? ` (${fieldsText(item.fields)})` : "");
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = first;
  const name = document.createElement("span");
  name.className = "name";
  name.title = item.name;
  const line = document.createElement("span");
  line.className = "score";
  line.textContent = score;
  card.append(imageElement(item.id, `item ${item.id}`), rank, name, line);
  card.addEventListener("click", () => searchItem(item.id));
  return card;
}

function classSuffix(item) {
  return item.class_name !== null && item.class_name !== undefined ? ` · ${item.class_name}` : "";
}

function showResults(answer) {
  const grid = $("results");
  grid.replaceChildren();
  let framed = false;
  for (const item of answer.results) {
    const card = itemCard(item, `#${item.rank}${classSuffix(item)}`,
      `cos ${item.cosine.toFixed(3)} · ${item.angle_deg.toFixed(1)}°`);
    if (item.same_class === true) card.classList.add("same");
    if (item.same_class === false) card.classList.add("other");
    framed = framed || item.same_class !== null;
    grid.append(card);
    const name = card.querySelector(".name");
    fitName(name, item.name); // once in the page: its width is known
  }
  $("frame-legend").hidden = !framed;
  $("results-title").textContent = `Top ${answer.results.length} (cosine similarity · angle)`;
}

// ---------------------------------------------------------------- the views: clusters, duplicates

function showView(name) {
  state.view = name;
  for (const view of ["search", "clusters", "duplicates"]) {
    $(`view-${view}`).hidden = view !== name;
    $(`tab-${view}`).setAttribute("aria-selected", String(view === name));
  }
  if (name === "clusters" && !state.clusters) loadClusters();
  if (name === "duplicates" && !state.duplicates) loadDuplicates();
  // the map rings what the view shows: the results (search), the chosen cluster's items, nothing yet (duplicates)
  state.highlight = name === "clusters" ? state.clusterItems : [];
  drawMap();
}

function labelsText(labels) {
  return Object.entries(labels || {}).slice(0, 4).map(([name, count]) => `${name}: ${count}`).join(", ");
}

async function loadClusters() {
  $("clusters-note").textContent = "organising the gallery (once)…";
  let answer;
  try {
    answer = await (await api("/clusters")).json();
  } catch (error) {
    $("clusters-note").textContent = "";
    setStatus(`the clusters could not be loaded: ${error.message}`, true);
    return;
  }
  state.clusters = answer;
  const scores = ["nmi", "ami"].filter((name) => name in answer)
    .map((name) => `${name.toUpperCase()} ${answer[name].toFixed(3)}`).join(", ");
  const noise = answer.method === "hdbscan" ? `, ${answer.noise} items in no cluster (noise)` : "";
  $("clusters-note").textContent = `${answer.k} clusters of ${answer.items} items (${answer.method}${noise}` +
    `${scores ? `; against the labels: ${scores}` : ""}). Click a cluster to see its items, nearest its centre first.`;
  const list = $("cluster-list");
  list.replaceChildren();
  for (const row of answer.clusters) {
    const entry = document.createElement("button");
    entry.type = "button";
    entry.className = "cluster";
    entry.dataset.cluster = String(row.cluster);
    entry.style.setProperty("--dot", classColour(row.cluster));
    const head = document.createElement("span");
    head.className = "head";
    head.textContent = `cluster ${row.cluster} · ${row.size} items · cos ${row.mean_cosine.toFixed(3)}`;
    const labels = document.createElement("span");
    labels.className = "labels";
    labels.textContent = labelsText(row.labels);
    const thumbs = document.createElement("span");
    thumbs.className = "thumbs";
    for (const item of row.preview) thumbs.append(imageElement(item.id, `item ${item.id}`));
    entry.append(head, labels, thumbs);
    entry.addEventListener("click", () => showCluster(row.cluster));
    list.append(entry);
  }
  drawMap();
}

async function showCluster(c) {
  let answer;
  try {
    answer = await (await api(`/clusters/${c}?limit=${state.info.max_k}`)).json();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  for (const entry of document.querySelectorAll("#cluster-list .cluster")) {
    entry.classList.toggle("chosen", entry.dataset.cluster === String(c));
  }
  const title = $("cluster-title");
  title.hidden = false;
  const more = answer.size > answer.items.length ? `, the ${answer.items.length} nearest its centre` : "";
  title.textContent = `Cluster ${c}: ${answer.size} items${more} (cosine to the centre)`;
  const grid = $("cluster-items");
  grid.replaceChildren();
  for (const item of answer.items) {
    const card = itemCard(item, `#${item.rank}${classSuffix(item)}`, `cos ${item.cosine.toFixed(3)} to the centre`);
    grid.append(card);
    fitName(card.querySelector(".name"), item.name);
  }
  state.clusterItems = answer.items.map((item) => item.id);
  state.highlight = state.clusterItems;
  drawMap();
  setStatus(`cluster ${c}: ${answer.size} items`);
}

async function loadDuplicates() {
  $("duplicates-note").textContent = "looking for near-duplicates (once)…";
  let answer;
  try {
    answer = await (await api(`/duplicates?limit=${state.info.max_k}`)).json();
  } catch (error) {
    $("duplicates-note").textContent = "";
    setStatus(`the duplicates could not be loaded: ${error.message}`, true);
    return;
  }
  state.duplicates = answer;
  const shown = answer.groups.length < answer.groups_total ? ` (the ${answer.groups.length} largest shown)` : "";
  $("duplicates-note").textContent = answer.groups_total === 0
    ? `No near-duplicates: no two items at cosine ≥ ${answer.threshold} (${answer.method}).`
    : `${answer.groups_total} group${answer.groups_total === 1 ? "" : "s"} of near-duplicates${shown}: ${answer.items_in_groups} items at cosine ≥ ` +
      `${answer.threshold}, ${answer.to_remove} to remove if each group keeps its first item (${answer.method}).`;
  const rows = $("duplicate-groups");
  rows.replaceChildren();
  for (const group of answer.groups) {
    const row = document.createElement("div");
    row.className = "group";
    row.dataset.group = String(group.group);
    const head = document.createElement("span");
    head.className = "head";
    head.textContent = `group ${group.group} · ${group.size} items`;
    const cards = document.createElement("div");
    cards.className = "cards";
    for (const item of group.items) {
      const first = item.keep ? `keep${classSuffix(item)}` : `copy${classSuffix(item)}`;
      const card = itemCard(item, first, item.keep ? "the one to keep" : `cos ${item.cosine.toFixed(4)}`);
      if (item.keep) card.classList.add("keep");
      cards.append(card);
      fitName(card.querySelector(".name"), item.name);
    }
    row.append(head, cards);
    row.addEventListener("mouseenter", () => { state.highlight = group.items.map((item) => item.id); drawMap(); });
    rows.append(row);
  }
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
  const byCluster = state.colour === "cluster" && m.clusters;
  for (let i = 0; i < m.ids.length; i++) {
    ctx.fillStyle = classColour(byCluster ? m.clusters[i] : m.labels ? m.labels[i] : -1);
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
  if (state.view === "search") {
    for (const item of state.results) ring(item.id, "#000", radius + 3, 1.5);
    if (state.query && state.query.kind === "item") ring(state.query.id, "#000", radius + 6, 3);
  }
  for (const id of state.highlight) ring(id, "#000", radius + 3, 1.5);
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

function count(n) {
  return Number(n).toLocaleString("en-US");
}

function showMapInfo() {
  const m = state.map;
  const [method, ...rest] = m.projection.split(" (");
  const why = rest.join(" (").replace(/\)$/, ""); // "t-SNE (what it keeps)" -> "what it keeps"
  const what = m.shown < m.total
    ? `${method} of ${count(m.shown)} of ${count(m.total)} items (a fixed sample)`
    : `${method} of ${count(m.total)} items`;
  const variance = m.explained_variance_ratio
    ? `, ${(100 * (m.explained_variance_ratio[0] + m.explained_variance_ratio[1])).toFixed(0)}% of the variance`
    : "";
  $("map-note").textContent = `${what}${variance}${why ? `: ${why}` : ""}. Click a point to see its neighbours.`;
  const byCluster = state.colour === "cluster" && m.clusters;
  const legend = $("map-legend");
  legend.replaceChildren();
  const names = byCluster ? Array.from({ length: m.cluster_count }, (_, c) => `cluster ${c}`) : m.classes;
  names.slice(0, 40).forEach((name, code) => {
    const entry = document.createElement("span");
    entry.textContent = name;
    entry.style.setProperty("--dot", classColour(code));
    legend.append(entry);
  });
  document.querySelector('input[name="colour"][value="cluster"]').disabled = !m.clusters;
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
  for (const tab of document.querySelectorAll(".views [role=tab]")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  for (const radio of document.querySelectorAll('input[name="colour"]')) {
    radio.addEventListener("change", () => {
      state.colour = radio.value;
      if (state.map) { showMapInfo(); drawMap(); }
    });
  }
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
    canvas.title = i < 0 ? "" : `item ${m.ids[i]}` + (m.labels && m.labels[i] >= 0 ? ` · ${m.classes[m.labels[i]]}` : "") +
      (m.clusters ? ` · cluster ${m.clusters[i]}` : "");
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
