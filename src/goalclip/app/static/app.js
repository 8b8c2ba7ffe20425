// goalclip serve: four views over the JSON API of goalclip/app/server.py. Plain DOM, stable ids.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

function showMessage(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

async function api(path) {
  const response = await fetch(path);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok || body.error) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function show(view) {
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  showMessage("");
  if (view === "pairs" && !$("pairs").dataset.loaded) loadPairs(0);
  if (view === "runs" && !$("runs-table").dataset.loaded) loadRuns("");
}

// ---------------------------------------------------------------- search
let lastQuery = "";

async function runSearch(event) {
  event.preventDefault();
  showMessage("");
  const query = $("query").value;
  $("results").replaceChildren();
  $("results").dataset.state = "searching";
  try {
    const body = await api(`/api/search?q=${encodeURIComponent(query)}&k=${encodeURIComponent($("k").value)}`);
    lastQuery = body.query;
    body.models.forEach((column, m) => {
      const hits = el("div", { className: "hits" });
      if (column.error) hits.append(el("p", { className: "error" }, column.error));
      for (const hit of column.hits || []) {
        const card = el("div", { className: "result", title: "where each sentence lands" },
          el("img", { src: `/api/image?model=${m}&id=${encodeURIComponent(hit.id)}`, alt: hit.id }),
          el("div", {}, `#${hit.rank}  ${hit.score.toFixed(3)}`), el("div", {}, hit.id));
        Object.assign(card.dataset, { id: hit.id, rank: hit.rank, score: hit.score, model: m });
        card.addEventListener("click", () => openHeatmaps(m, hit.id, column.name));
        hits.append(card);
      }
      $("results").append(el("div", { className: "column", id: `results-${m}` },
        el("h3", { title: column.model }, column.name), hits));
    });
    $("results").dataset.state = "done";
  } catch (error) {
    $("results").dataset.state = "error";
    showMessage(error.message);
  }
}

// ---------------------------------------------------------------- sentences
async function openHeatmaps(model, id, name) {
  show("sentences");
  $("heatmaps").replaceChildren();
  $("heatmaps").dataset.state = "loading";
  $("sentences-head").textContent = `${id} - ${name}`;
  try {
    const body = await api(`/api/heatmap?model=${model}&id=${encodeURIComponent(id)}&q=${encodeURIComponent(lastQuery)}`);
    $("sentences-head").textContent =
      `${id} - ${name} - ${body.grid}x${body.grid} patches, cosine ${body.scale[0]} (dark) to ${body.scale[1]} (bright)`;
    for (const item of body.sentences) {
      $("heatmaps").append(el("div", { className: "heatmap-card" },
        el("img", { className: "heatmap", src: item.png, alt: item.sentence, width: 224, height: 224 }),
        el("p", {}, item.sentence), el("small", {}, `cosine ${item.min} to ${item.max}`)));
    }
    $("heatmaps").dataset.state = "done";
  } catch (error) {
    $("heatmaps").dataset.state = "error";
    showMessage(error.message);
  }
}

// ---------------------------------------------------------------- pairs
let pairsPage = 0;

async function loadPairs(page) {
  showMessage("");
  const query = new URLSearchParams({ page, min: $("pairs-min").value, max: $("pairs-max").value,
    source: $("pairs-source").value });
  $("pairs").dataset.state = "loading";
  try {
    const body = await api(`/api/pairs?${query}`);
    pairsPage = body.page;
    const chosen = $("pairs-source").value;
    $("pairs-source").replaceChildren(el("option", { value: "" }, "all"),
      ...body.sources.map((s) => el("option", { value: s, selected: s === chosen }, s)));
    $("pairs-page").textContent = `page ${body.page + 1} of ${body.pages} (${body.matching} of ${body.total} pairs)`;
    $("pairs").replaceChildren(...body.pairs.map((pair) => {
      const card = el("div", { className: "pair" },
        el("img", { src: `/api/pair/${pair.n}.png`, alt: pair.sentence }),
        el("p", {}, pair.sentence), el("small", {}, `${pair.id} - ${pair.source} - score ${pair.score}`));
      Object.assign(card.dataset, { id: pair.id, n: pair.n, source: pair.source, score: pair.score });
      return card;
    }));
    $("pairs-prev").disabled = body.page === 0;
    $("pairs-next").disabled = body.page + 1 >= body.pages;
    $("pairs").dataset.loaded = "1";
    $("pairs").dataset.state = "done";
  } catch (error) {
    $("pairs").dataset.state = "error";
    showMessage(error.message);
  }
}

// ---------------------------------------------------------------- runs
function table(node, rows) {
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const cell = (value) => (typeof value === "number" && !Number.isInteger(value) ? value.toFixed(4) : value ?? "");
  node.replaceChildren(el("tr", {}, ...columns.map((c) => el("th", {}, c))),
    ...rows.map((row) => el("tr", {}, ...columns.map((c) => el("td", {}, String(cell(row[c])))))));
}

async function loadRuns(add) {
  showMessage("");
  $("runs-table").dataset.state = "loading";
  try {
    const body = await api(`/api/runs?add=${encodeURIComponent(add)}`);
    table($("runs-table"), body.runs.map((run) => run.table));
    table($("evals-table"), body.runs.flatMap((run) => run.evals.map((row) => ({ run: run.run, ...row }))));
    $("runs-plot").src = `/api/runs.png?t=${Date.now()}`;
    $("runs-table").dataset.loaded = "1";
    $("runs-table").dataset.state = "done";
  } catch (error) {
    $("runs-table").dataset.state = "error";
    showMessage(error.message);
  }
}

// ---------------------------------------------------------------- start
async function pollStatus() {
  try {
    const body = await api("/api/status");
    $("models-status").textContent = body.models.map((m) =>
      `${m.name}: ${m.state}${m.images ? ` (${m.images} images)` : ""}`).join(" | ");
    $("models-status").title = body.models.map((m) => m.model).join("\n");
    $("models-status").dataset.state = body.models.every((m) => m.state !== "loading") ? "settled" : "loading";
    const errors = body.models.filter((m) => m.error).map((m) => m.error);
    if (errors.length && !$("view-search").hidden) showMessage(errors.join("\n"));
    if (body.models.some((m) => m.state === "loading")) setTimeout(pollStatus, 1000);
  } catch (error) {
    showMessage(error.message);
  }
}

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => show(button.dataset.view));
}
$("search-form").addEventListener("submit", runSearch);
$("pairs-form").addEventListener("submit", (event) => { event.preventDefault(); loadPairs(0); });
$("pairs-prev").addEventListener("click", () => loadPairs(pairsPage - 1));
$("pairs-next").addEventListener("click", () => loadPairs(pairsPage + 1));
$("runs-form").addEventListener("submit", (event) => { event.preventDefault(); loadRuns($("runs-add").value); });
pollStatus();
