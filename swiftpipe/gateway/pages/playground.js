// The playground: paste a text, extract, see the fields in the text, correct or confirm the answer.
"use strict";

let versions = {};
let current = null;  // {id, version, fields, text}

async function ready() {
  try {
    versions = await loadVersions(document.getElementById("version"), true);
    setStatus("ready", false);
  } catch (e) { setStatus(e.message, true); }
}

function show(answer, text) {
  current = {id: answer.id, version: answer.version, fields: answer.fields, text};
  const version = versions[answer.version];
  document.getElementById("result").hidden = false;
  document.getElementById("request-id").textContent = answer.id;
  document.getElementById("answered-by").textContent = answer.version;
  document.getElementById("latency").textContent = String(answer.latency_ms);
  renderFlags(document.getElementById("flags"), answer.flags);
  const missing = renderHighlight(document.getElementById("highlight"), document.getElementById("legend"),
                                  text, answer.fields || {}, version);
  renderForm(document.getElementById("form"), answer.fields || {}, version, missing, answer.confidence, answer.flags);
  document.getElementById("row-confidence").textContent =
    answer.row_confidence === null || answer.row_confidence === undefined ? "–" : answer.row_confidence.toFixed(3);
  document.getElementById("needs-review").hidden = !answer.needs_review;
}

async function extract() {
  const text = document.getElementById("text").value;
  const model = document.getElementById("version").value;
  setStatus("extracting ...", false);
  try {
    const answer = await api("/v1/extract", {json: {text, model}});
    show(answer, text);
    setStatus(answer.valid ? "done" : "the answer is not valid: " + answer.flags.join(", "), !answer.valid);
  } catch (e) { setStatus(e.message, true); }
}

async function review(body, what) {
  if (!current) return;
  try {
    const stored = await sendFeedback(current.id, body);
    setStatus(what + ": saved as " + stored.verdict, false);
  } catch (e) { setStatus(e.message, true); }
}

document.getElementById("extract").addEventListener("click", extract);
document.getElementById("save").addEventListener("click", () => {
  let fields;
  try { fields = readForm(document.getElementById("form")); } catch (e) { setStatus(e.message, true); return; }
  review({fields}, "correction");
});
document.getElementById("correct").addEventListener("click", () => review({verdict: "correct"}, "confirmation"));
setupKey(ready);
