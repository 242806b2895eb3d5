// The vitkit page: choose or drop an image, see its top-5 labels and, when the server has an index, the
// most similar indexed images; with an image-text model (CLIP, SigLIP), search the index by a sentence.
// Talks only to this server's /v1 API; all text goes in through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("vitkit-key") || "", index: null, classes: 0, text: false, urls: [] };

async function api(path, { contentType, ...options } = {}) {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  if (contentType) headers["Content-Type"] = contentType;
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let detail = response.statusText;
  try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
  if (response.status === 401) $("key-form").hidden = false;
  throw new Error(`${response.status}: ${detail}`);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadInfo() {
  try {
    const info = await (await api("/v1/models")).json();
    const model = info.models[0];
    state.classes = model.num_classes;
    state.text = model.text;
    state.index = info.index;
    $("labels-form").hidden = !model.text;
    $("model").textContent = `${model.id} · ${model.family} · ${model.input_size} px · ` +
      (model.num_classes ? `${model.num_classes} classes` : "no classifier head");
    $("index").textContent = info.index ? `index: ${info.index.count} images (${info.index.pool} pooling)` +
                                          (info.index.text_search ? " · searchable by text" : "")
                                        : "no image index loaded";
    $("text-form").hidden = !(info.index && info.index.text_search);
    setStatus("");
  } catch (err) {
    setStatus(err.message, true);
  }
}

function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name || "image");
  return form;
}

function showLabels(result) {
  const list = $("labels");
  list.replaceChildren();
  for (const p of result.top_k) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = p.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p.score).toFixed(1)}%`;
    bar.append(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(100 * p.score).toFixed(1)}%`;
    item.append(name, bar, score);
    list.append(item);
  }
  $("labels-section").hidden = false;
}

async function thumbnailUrl(hit) {
  const url = URL.createObjectURL(await (await api(hit.thumbnail)).blob());
  state.urls.push(url);
  return url;
}

async function showHits(result, title = "Most similar indexed images") {
  $("similar-title").textContent = title;
  const grid = $("similar");
  grid.replaceChildren();
  const figures = result.hits.map(async (hit) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = hit.label || hit.path;
    const caption = document.createElement("figcaption");
    const title = document.createElement("b");
    title.textContent = hit.label || hit.path.split(/[\\/]/).pop();
    caption.append(title, document.createElement("br"), `similarity ${hit.score.toFixed(3)}`);
    figure.append(img, caption);
    grid.append(figure);
    img.src = await thumbnailUrl(hit);
  });
  $("similar-section").hidden = false;
  await Promise.all(figures);
}

async function analyse(file) {
  if (!file) return;
  state.urls.forEach((url) => URL.revokeObjectURL(url));
  state.urls = [URL.createObjectURL(file)];
  $("preview").src = state.urls[0];
  $("preview").hidden = false;
  $("labels-section").hidden = true;
  $("similar-section").hidden = true;
  setStatus("Analysing…");
  const jobs = [];
  const labels = state.text ? $("zero-shot-labels").value.trim() : "";
  if (labels) {  // zero-shot: the image scored against these class names
    const query = new URLSearchParams({ top_k: "5", labels });
    jobs.push(api(`/v1/classify?${query}`, { method: "POST", body: upload(file) })
      .then((r) => r.json()).then(showLabels));
  } else if (state.classes) {
    jobs.push(api("/v1/classify?top_k=5", { method: "POST", body: upload(file) })
      .then((r) => r.json()).then(showLabels));
  }
  if (state.index) {
    jobs.push(api("/v1/search?k=8", { method: "POST", body: upload(file) })
      .then((r) => r.json()).then(showHits));
  }
  const failed = (await Promise.allSettled(jobs)).find((r) => r.status === "rejected");
  setStatus(failed ? failed.reason.message : "Done.", Boolean(failed));
}

async function searchText(query) {
  if (!query) return;
  state.urls.forEach((url) => URL.revokeObjectURL(url));
  state.urls = [];
  $("preview").hidden = true;
  $("labels-section").hidden = true;
  setStatus("Searching…");
  try {
    const response = await api("/v1/search?k=8", {
      method: "POST", body: JSON.stringify({ text: query }), contentType: "application/json" });
    await showHits(await response.json(), `Indexed images matching “${query}”`);
    setStatus("Done.");
  } catch (err) {
    setStatus(err.message, true);
  }
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => analyse(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    analyse(e.dataTransfer.files[0]);
  });
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchText($("text-query").value.trim());
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem("vitkit-key", state.key);
    $("key-form").hidden = true;
    loadInfo();
  });
  loadInfo();
}

init();
