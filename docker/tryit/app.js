// The try-it page: read the model's catalog, send one photo to the raw-image route /stylize
// (same origin: the photo as a multipart field, the params as a query string, the stylized
// JPEG back with its lineage in Stylize-* headers), show the result beside the original. The
// request is the one docs/serving.md shows for `curl -F image=@photo.jpg`.
"use strict";

const $ = (id) => document.getElementById(id);
let photo = null; // the File the user picked or dropped
let resultUrl = null; // the object URL of the last result (revoked when replaced)

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

// styles.json: {"model": {...}, "styles": [{"style", "name", "kind", "aliases", "detail"}]}
async function loadCatalog() {
  const response = await fetch("/tryit/styles.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`the catalog /tryit/styles.json answered ${response.status}`);
  const catalog = await response.json();
  const model = catalog.model || {};
  $("model").textContent =
    `${model.name || "model"} ${String(model.fingerprint || "").slice(0, 12)}: ` +
    `${catalog.styles.length} styles (built from ${model.built_from || "?"})`;
  const select = $("style");
  for (const entry of catalog.styles) {
    const option = document.createElement("option");
    option.value = entry.style;
    const names = [entry.name].concat(entry.aliases || []);
    option.textContent = entry.kind === "built-in"
      ? `${entry.style} · ${names.join(", ")}`
      : `${names.join(", ")} (${entry.detail})`;
    option.dataset.detail = entry.detail;
    select.appendChild(option);
  }
  const preferred = catalog.styles.find((s) => s.style === (catalog.default_style || "7"));
  if (preferred) select.value = preferred.style;
  select.disabled = false;
  refresh();
}

function refresh() {
  $("go").disabled = !photo || $("style").disabled;
  const option = $("style").selectedOptions[0];
  $("style-note").textContent = option ? option.dataset.detail : "";
}

function pick(file) {
  if (!file) return;
  photo = file;
  showError("");
  const original = $("original");
  original.onerror = () => { original.hidden = true; }; // not a picture the browser can show
  original.src = URL.createObjectURL(file);
  original.hidden = false;
  $("result").hidden = true;
  $("download").hidden = true;
  $("result-info").textContent = "";
  setStatus(`${file.name}, ${(file.size / 1024).toFixed(0)} KB`);
  refresh();
}

// MLflow wraps the model's error as "Failed to predict data '<the whole frame>'. Error: <ours>":
// show the model's own message, which names the problem.
function readable(message) {
  const marker = message.lastIndexOf("Error: ");
  return marker >= 0 ? message.slice(marker + "Error: ".length) : message;
}

async function stylize() {
  showError("");
  const style = $("style").value;
  const query = new URLSearchParams({
    style,
    strength: String(Number($("strength").value)),
    preserve_color: String($("preserve").checked),
    max_size: String(Number($("max-size").value)),
    format: "jpeg",
  });
  $("go").disabled = true;
  setStatus(`stylizing ${photo.name} with ${style}…`);
  const started = performance.now();
  try {
    const form = new FormData();
    form.append("image", photo, photo.name);
    const response = await fetch(`/stylize?${query}`, { method: "POST", body: form });
    if (!response.ok) {
      const text = await response.text();
      let answer = null;
      try { answer = JSON.parse(text); } catch { /* nginx or proxy text */ }
      const message = (answer && answer.message) || text || response.statusText;
      throw new Error(`${response.status}: ${readable(message)}`);
    }
    const out = {
      style: response.headers.get("Stylize-Style"),
      width: response.headers.get("Stylize-Width"),
      height: response.headers.get("Stylize-Height"),
    };
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(await response.blob());
    const result = $("result");
    result.src = resultUrl;
    result.hidden = false;
    result.dataset.width = out.width;
    result.dataset.height = out.height;
    result.dataset.sha256 = response.headers.get("Stylize-Output-Sha256");
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    $("result-info").textContent = `${out.style}, ${out.width}x${out.height}`;
    const link = $("download");
    link.href = resultUrl;
    link.download = `${photo.name.replace(/\.[^.]*$/, "")}-${out.style}.jpg`;
    link.hidden = false;
    setStatus(`done in ${seconds} s`);
  } catch (error) {
    setStatus("");
    showError(error.message);
  } finally {
    refresh();
  }
}

function wire() {
  $("photo").addEventListener("change", (e) => pick(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  $("style").addEventListener("change", refresh);
  $("strength").addEventListener("input", () => {
    $("strength-value").textContent = Number($("strength").value).toFixed(2);
  });
  $("go").addEventListener("click", stylize);
  loadCatalog().catch((error) => showError(`cannot load the style catalog: ${error.message}`));
}

wire();
