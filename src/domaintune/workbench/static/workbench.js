// The workbench's only script: the upload button, and live charts fed by Server-Sent Events.
// Everything is drawn here on <canvas>; nothing is loaded from the internet.
"use strict";

const csrf = () => document.querySelector("meta[name=csrf]").content;
const COLOURS = ["#2f6fde", "#e8743b", "#19a979", "#945ecf"];

function drawChart(canvas, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 42;
  ctx.clearRect(0, 0, w, h);
  const points = Object.values(series).flat();
  if (!points.length) { ctx.fillStyle = "#999"; ctx.fillText("no values yet", w / 2 - 30, h / 2); return; }
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += Math.abs(y1) * 0.1 || 1; y0 -= Math.abs(y0) * 0.1 || 1; }
  const X = x => pad + (x - x0) / (x1 - x0) * (w - pad - 10), Y = y => h - 22 - (y - y0) / (y1 - y0) * (h - 34);
  ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.beginPath(); ctx.moveTo(pad, 8); ctx.lineTo(pad, h - 22); ctx.lineTo(w - 8, h - 22); ctx.stroke();
  ctx.fillText(y1.toPrecision(3), 2, 14); ctx.fillText(y0.toPrecision(3), 2, h - 24);
  ctx.fillText(String(x0), pad, h - 8); ctx.fillText("step " + x1, w - 60, h - 8);
  let legendX = pad + 8;
  Object.entries(series).forEach(([name, pts], i) => {
    if (!pts.length) return;
    ctx.strokeStyle = ctx.fillStyle = COLOURS[i % COLOURS.length];
    ctx.beginPath();
    pts.forEach(([x, y], j) => j ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y)));
    ctx.stroke();
    pts.forEach(([x, y]) => ctx.fillRect(X(x) - 1.5, Y(y) - 1.5, 3, 3));
    ctx.fillText(name, legendX, 14);
    legendX += ctx.measureText(name).width + 16;  // long run names must not overlap
  });
}

function liveCharts(holder) {
  // Each series maps step -> value, so a value re-sent after a reconnect or a resume replaces the old one.
  const data = {train: new Map(), validation: new Map(), lr: new Map(), grad: new Map(), speed: new Map()};
  // The latest line carries the last training and validation losses forward, as the CLI's progress line
  // does: a validation record holds no training loss, and the line should not lose it for a moment.
  let previous = null, pending = false, lastLoss, lastValidation;
  const sorted = m => [...m.entries()].sort((a, b) => a[0] - b[0]);
  const redraw = () => {
    pending = false;
    drawChart(document.getElementById("chart-loss"), {train: sorted(data.train), validation: sorted(data.validation)});
    drawChart(document.getElementById("chart-lr"), {"learning rate": sorted(data.lr)});
    drawChart(document.getElementById("chart-grad"), {"grad norm": sorted(data.grad)});
    drawChart(document.getElementById("chart-speed"), {"tokens/s": sorted(data.speed)});
  };
  const add = r => {
    if (r.loss !== undefined) data.train.set(r.step, r.loss);
    if (r.eval_loss !== undefined) data.validation.set(r.step, r.eval_loss);
    if (r.learning_rate !== undefined) data.lr.set(r.step, r.learning_rate);
    if (r.grad_norm !== undefined) data.grad.set(r.step, r.grad_norm);
    if (r.num_input_tokens_seen !== undefined && r.time !== undefined) {
      if (previous && r.time > previous.time && r.num_input_tokens_seen > previous.tokens)
        data.speed.set(r.step, (r.num_input_tokens_seen - previous.tokens) / (r.time - previous.time));
      previous = {time: r.time, tokens: r.num_input_tokens_seen};
    }
    if (r.loss !== undefined) lastLoss = r.loss;
    if (r.eval_loss !== undefined) lastValidation = r.eval_loss;
    const parts = [`step ${r.step}` + (r.max_steps ? `/${r.max_steps}` : "")];
    if (lastLoss !== undefined) parts.push(`loss ${lastLoss.toFixed(4)}`);
    if (lastValidation !== undefined) parts.push(`val ${lastValidation.toFixed(4)}`);
    document.getElementById("latest").textContent = parts.join(" · ");
    if (!pending) { pending = true; requestAnimationFrame(redraw); }
  };
  redraw();
  const events = new EventSource(holder.dataset.events);  // reconnects by itself, resuming at the last id
  events.addEventListener("metric", e => add(JSON.parse(e.data)));
  events.addEventListener("reset", () => {
    Object.values(data).forEach(m => m.clear());
    previous = null; lastLoss = lastValidation = undefined;
  });
  events.addEventListener("status", e => {
    const s = JSON.parse(e.data);
    const status = document.getElementById("status");
    status.textContent = s.status; status.className = "status " + s.status;
    document.getElementById("progress").textContent = s.step !== null ? `step ${s.step}/${s.total}` : "";
    document.getElementById("eta").textContent = s.eta ? `ETA ${s.eta}` : "";
    document.getElementById("error").textContent = s.error || "";
    document.getElementById("stop").disabled = !s.running;
    document.getElementById("resume").disabled = s.running || s.status === "done";
    for (const id of ["evaluate", "export"]) {
      const button = document.getElementById(id);
      if (button) button.disabled = s.running;
    }
  });
  events.addEventListener("end", () => {
    events.close();
    // The run ended while the page was open: reload once for its evaluation and artefacts.
    if (document.getElementById("stop").dataset.sawRunning) location.reload();
  });
  events.addEventListener("status", e => { if (JSON.parse(e.data).running) document.getElementById("stop").dataset.sawRunning = "1"; });
}

function uploadButton(button) {
  button.addEventListener("click", async () => {
    const file = document.getElementById("file").files[0];
    const error = document.getElementById("upload-error");
    if (!file) { error.textContent = "choose a file first"; return; }
    const response = await fetch("/upload?name=" + encodeURIComponent(file.name),
                                 {method: "POST", body: file, headers: {"X-CSRF-Token": csrf()}});
    if (!response.ok) { error.textContent = (await response.json().catch(() => ({}))).detail || response.statusText; return; }
    location.href = "/new?data=" + encodeURIComponent((await response.json()).file);
  });
}

// The estimate of the recipe being edited: started in the background, its output polled until it is done.
function estimateButton(button) {
  const output = document.getElementById("estimate"), state = document.getElementById("estimate-state");
  button.addEventListener("click", async () => {
    button.disabled = true;
    output.hidden = false; output.className = ""; output.textContent = "";
    state.textContent = "estimating (prepares the data and times a few steps)...";
    try {
      const response = await fetch("/estimate", {method: "POST", body: new URLSearchParams(new FormData(button.form))});
      const started = await response.json().catch(() => ({}));
      if (!response.ok) {
        output.className = "error";
        output.textContent = started.problems
          ? started.problems.map(p => (p.line ? `line ${p.line}: ` : "") + `${p.field}: ${p.message}`).join("\n")
          : started.detail || response.statusText;
        return;
      }
      for (;;) {
        await new Promise(resolve => setTimeout(resolve, 1000));
        const polled = await fetch(started.poll);
        const s = await polled.json().catch(() => ({}));
        if (!polled.ok) { output.className = "error"; output.textContent = s.detail || polled.statusText; return; }
        output.textContent = s.text + (s.error ? `\nerror: ${s.error}` : "");
        if (s.done) { if (s.error) output.className = "error"; return; }
      }
    } finally {
      state.textContent = "";
      button.disabled = false;
    }
  });
}

// The arena: both answers stream into their columns (server-sent events read from a POST's body, since
// EventSource can only GET); in blind mode the columns are A and B and a choice is posted back.
function arena(holder) {
  let conversation = "";
  const transcript = document.getElementById("transcript");
  const error = document.getElementById("arena-error");
  const element = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const choose = async (turn, item, choice) => {
    const body = new URLSearchParams({csrf: csrf(), item: String(item), choice: String(choice)});
    const response = await fetch(holder.dataset.choose, {method: "POST", body});
    const result = await response.json().catch(() => ({}));
    if (!response.ok) { error.textContent = result.detail || response.statusText; return; }
    turn.querySelectorAll(".choices button").forEach(button => button.disabled = true);
    Object.entries(result.sources).forEach(([letter, source]) =>
      turn.querySelector(`.answer[data-column="${letter}"] .who`).textContent = `${letter} (${source})`);
    turn.querySelector(".verdict").textContent = `recorded: ${result.choice}`;
    const s = result.summary;
    if (s.tuned_win_rate !== undefined)
      document.getElementById("win-rate").textContent = `${s.done} choices recorded for this run; tuned's win rate ` +
        `${(100 * s.tuned_win_rate).toFixed(0)}% [${s.interval.map(x => (100 * x).toFixed(0)).join(", ")}]`;
  };
  const handle = (turn, kind, data) => {
    if (kind === "start") {
      conversation = data.conversation;
      const columns = turn.querySelector(".columns");
      data.columns.forEach(column => {
        const answer = element("div", "answer");
        answer.dataset.column = column;
        answer.append(element("b", "who", column), element("div", "text"));
        columns.append(answer);
      });
    } else if (kind === "piece") {
      turn.querySelector(`.answer[data-column="${data.column}"] .text`).textContent += data.text;
    } else if (kind === "answer") {
      const answer = turn.querySelector(`.answer[data-column="${data.column}"]`);
      answer.querySelector(".text").textContent = data.text;
      answer.classList.add("done");
    } else if (kind === "item") {
      const choices = element("div", "choices");
      [["A is better", 0], ["B is better", 1], ["Tie", "tie"]].forEach(([label, choice]) => {
        const button = element("button", "", label);
        button.dataset.choice = String(choice);
        button.addEventListener("click", () => choose(turn, data.item, choice));
        choices.append(button);
      });
      choices.append(element("span", "verdict"));
      turn.append(choices);
    } else if (kind === "error") {
      error.textContent = data.message;
    }
  };
  document.getElementById("ask").addEventListener("submit", async event => {
    event.preventDefault();
    const input = document.getElementById("message"), send = document.getElementById("send");
    const message = input.value.trim();
    if (!message) return;
    error.textContent = "";
    const turn = element("div", "turn");
    turn.append(element("div", "message user", message), element("div", "columns"));
    transcript.append(turn);
    send.disabled = true;
    try {
      const response = await fetch(holder.dataset.chat, {
        method: "POST", headers: {"X-CSRF-Token": csrf(), "Content-Type": "application/json"},
        body: JSON.stringify({conversation, message, blind: document.getElementById("blind").checked,
                              max_new_tokens: Number(holder.dataset.maxNewTokens)})});
      if (!response.ok) {
        error.textContent = (await response.json().catch(() => ({}))).detail || response.statusText;
        turn.remove();
        return;
      }
      input.value = "";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const kind = (frame.match(/^event: (.*)$/m) || [])[1];
          const data = (frame.match(/^data: (.*)$/m) || [])[1];
          if (kind && data) handle(turn, kind, JSON.parse(data));
        }
      }
      turn.classList.add("complete");
    } finally {
      send.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const charts = document.getElementById("charts");
  if (charts) liveCharts(charts);
  const compared = document.getElementById("chart-compare");
  if (compared) drawChart(compared, JSON.parse(compared.dataset.curves));
  const upload = document.getElementById("upload");
  if (upload) uploadButton(upload);
  const estimate = document.getElementById("estimate-button");
  if (estimate) estimateButton(estimate);
  const playground = document.getElementById("arena");
  if (playground) arena(playground);
});
