"use strict";
// The operator page: the station's state arrives as Server-Sent Events (/api/updates) a few times a
// second; each tile fetches its newest picture when the station has drawn one and the previous
// picture has finished loading, so a slow tablet simply sees fewer pictures.

const $ = (selector, root = document) => root.querySelector(selector);
const tiles = new Map();      // source name -> its <article>
const listed = new Map();     // anomaly id -> its <li>
const operatorInput = $("#operator");
operatorInput.value = localStorage.getItem("zsad-edge-operator") || "";
operatorInput.addEventListener("change", () => localStorage.setItem("zsad-edge-operator", operatorInput.value));

function text(element, value) {
  if (element.textContent !== value) element.textContent = value;
}

function fixed(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : "-";
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function duration(seconds) {
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return `${h}h ${String(m).padStart(2, "0")}m ${String(s % 60).padStart(2, "0")}s`;
}

function tileFor(name) {
  if (!tiles.has(name)) {
    const tile = $("#tile").content.firstElementChild.cloneNode(true);
    tile.dataset.source = name;
    text($(".name", tile), name);
    const picture = $(".picture", tile);
    picture.dataset.shown = "0";
    picture.addEventListener("load", () => { picture.dataset.loading = ""; });
    picture.addEventListener("error", () => { picture.dataset.loading = ""; });
    $(".steer", tile).addEventListener("click", () => steer(name, tile.dataset.paused === "true" ? "resume" : "pause"));
    $("#tiles").append(tile);
    tiles.set(name, tile);
  }
  return tiles.get(name);
}

function showSource(name, source) {
  const tile = tileFor(name);
  const last = source.last;
  const verdict = $(".verdict", tile);
  const kind = last ? (last.anomalous ? "anomalous" : "normal") : "none";
  verdict.className = `verdict badge ${kind}`;
  text(verdict, last ? kind : "no frame");
  tile.classList.toggle("anomalous", kind === "anomalous");
  tile.classList.toggle("down", !source.up);
  tile.dataset.processed = source.processed;
  tile.dataset.skipped = source.skipped;
  tile.dataset.paused = String(source.paused);
  tile.dataset.up = String(source.up);
  const state = $(".state", tile);
  let said = "", cls = "state";
  if (!source.up) { said = `down: ${source.down_reason || "no frames"}`; cls += " down"; }
  else if (source.paused) { said = "paused"; cls += " paused"; }
  else if (source.ended) { said = "ended"; }
  state.className = cls;
  text(state, said);
  text($(".score", tile), last
    ? `score ${fixed(last.score)} / threshold ${fixed(last.image_threshold)} (${last.thresholds_from}), frame ${last.frame}` +
      (last.part_id ? `, part ${last.part_id}` : "")
    : "score -");
  text($(".figures", tile), `${fixed(source.fps, 1)} frames/s, latency p50 ${fixed(source.latency_ms.p50, 0)} ms, p95 ${fixed(source.latency_ms.p95, 0)} ms`);
  text($(".counts", tile), `${source.processed} scored, ${source.captured} captured, ${source.dropped} dropped, ${source.skipped} skipped` +
    (source.skipped_paused ? ` (${source.skipped_paused} while paused)` : ""));
  text($(".steer", tile), source.paused ? "resume" : "pause");
  const picture = $(".picture", tile);
  if (source.drawn > Number(picture.dataset.shown) && !picture.dataset.loading) {
    picture.dataset.loading = "1";
    picture.dataset.shown = String(source.drawn);
    picture.src = `/api/frame/${encodeURIComponent(name)}?n=${source.drawn}`;
  }
}

function showAnomalies(anomalies) {
  const list = $("#anomalies");
  const keep = new Set(anomalies.map((entry) => entry.id));
  for (const [id, item] of listed) {
    if (!keep.has(id)) { item.remove(); listed.delete(id); }
  }
  for (const entry of [...anomalies].reverse()) {   // oldest first, each new one goes on top
    let item = listed.get(entry.id);
    if (!item) {
      item = document.createElement("li");
      item.dataset.id = entry.id;
      item.dataset.listedAt = String(Date.now() / 1000);   // when it appeared: the page's own delay, measurable
      const thumbnail = document.createElement("img");
      thumbnail.alt = "";   // until drawn: a blank box (a frame not drawn for the page keeps it)
      const caption = document.createElement("span");
      caption.textContent = `${clock(entry.time)} ${entry.source} score ${fixed(entry.score)}` + (entry.part_id ? ` part ${entry.part_id}` : ` frame ${entry.frame}`);
      item.append(thumbnail, caption);
      item.addEventListener("click", () => detail(entry));
      list.prepend(item);
      listed.set(entry.id, item);
    }
    const thumbnail = $("img", item);
    if (entry.drawn && !thumbnail.getAttribute("src")) {
      thumbnail.alt = "thumbnail";
      thumbnail.src = `/api/anomalies/${entry.id}/thumbnail`;
    }
  }
}

function detail(entry) {
  text($("#detail-caption"), `${entry.source}, frame ${entry.frame}, ${new Date(entry.time * 1000).toLocaleString()}: ` +
    `score ${fixed(entry.score)} against ${fixed(entry.image_threshold)}`);
  $("#detail-overlay").src = `/api/anomalies/${entry.id}/overlay`;
  $("#detail-mask").src = `/api/anomalies/${entry.id}/mask`;
  $("#detail").showModal();
}

function showRecord(station) {
  const record = station.record || {};
  const thresholds = record.thresholds || {};
  const rows = [
    ["bundle", record.bundle], ["method", record.method], ["precision", record.precision],
    ["digest", (record.digest || "").slice(0, 16)], ["signature", record.signature ? record.signature.state : "-"],
    ["backend", record.backend || record.server], ["image threshold", fixed(thresholds.image)],
    ["map threshold", fixed(thresholds.map)],
    ["thresholds from", thresholds.source ? `${thresholds.source}${thresholds.calibrated ? ", calibrated" : ""}` : "-"],
    ["run", station.run],
  ];
  const list = $("#record");
  const html = rows.map(([key, value]) => `<dt>${key}</dt><dd></dd>`).join("");
  if (list.dataset.built !== "1") { list.innerHTML = html; list.dataset.built = "1"; }
  list.querySelectorAll("dd").forEach((dd, index) => text(dd, String(rows[index][1] ?? "-")));
}

function showSinks(sinks, outputs) {
  const body = $("#sinks tbody");
  const rows = Object.entries(sinks).map(([kind, counts]) => [kind, counts.written ?? "-",
    counts.dropped ?? "-", counts.failed ?? "-", "connected" in counts ? (counts.connected ? "connected" : "DOWN") : "ok"]);
  for (const [name, state] of Object.entries(outputs)) rows.push([name, state.written ?? "-", "-", "-", state.disk_full ? "DISK FULL" : "ok"]);
  body.replaceChildren(...rows.map((cells) => {
    const row = document.createElement("tr");
    for (const cell of cells) { const td = document.createElement("td"); td.textContent = String(cell); row.append(td); }
    return row;
  }));
}

function show(state) {
  const station = state.station;
  const health = $("#health");
  health.className = `badge ${station.status}`;
  text(health, station.status);
  text($("#uptime"), `up ${duration(station.now - station.started)}`);
  for (const [name, source] of Object.entries(state.sources)) showSource(name, source);
  showAnomalies(state.anomalies);
  showRecord(station);
  showSinks(state.sinks, state.outputs);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

async function steer(name, action) {
  const reply = await fetch(`/api/sources/${encodeURIComponent(name)}/${action}`, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({operator: operatorInput.value}),
  });
  if (reply.status === 401) { location.href = "/login"; return; }
  if (!reply.ok) alert((await reply.json()).error);
}

const updates = new EventSource("/api/updates");
updates.addEventListener("state", (message) => show(JSON.parse(message.data)));
updates.addEventListener("error", () => {
  const health = $("#health");
  health.className = "badge none";
  text(health, "station not answering");
});
