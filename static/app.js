// The page's script: streams NDJSON from /ui/stream and renders it safely.
// Model text only ever reaches the DOM through textContent; the one HTML we
// insert is what the server produced with Pygments and escaping.
"use strict";
(function () {
  const form = document.getElementById("prompt-form");
  if (!form) return;
  const answer = document.getElementById("answer");
  const errorBox = document.getElementById("error");
  const stats = document.getElementById("stats");
  const stopButton = document.getElementById("stop");
  const regenButton = document.getElementById("regenerate");
  const generateButton = document.getElementById("generate");
  const FENCE = /^```[ \t]*([\w+#.-]*)[^\n]*\n([\s\S]*?)(?:^```[ \t]*$|(?![\s\S]))/gm;

  let controller = null;
  let lastParams = null;
  let text = "";
  let blocks = [];
  let scheduled = false;

  const MESSAGES = {
    upstream_rate_limited: (e) => "The model is rate limited" + (e.retry_after ? `; try again in ${Math.ceil(e.retry_after)} s.` : "; try again shortly."),
    rate_limited: (e) => "Too many requests" + (e.retry_after ? `; try again in ${Math.ceil(e.retry_after)} s.` : "."),
    first_token_timeout: () => "The model took too long to start answering. Try again, or a shorter prompt.",
    idle_timeout: () => "The model stopped sending mid-answer. What arrived is shown; try Regenerate.",
    deadline_exceeded: () => "The answer took longer than the server allows. What arrived is shown.",
    prompt_too_long: (e) => e.message,
    upstream_auth: () => "The server's model API key was rejected. Please tell the operator.",
    upstream_unavailable: () => "The model server is unavailable right now. Try again in a moment.",
    upstream_unreachable: () => "The model server could not be reached. Try again in a moment.",
    upstream_disconnected: () => "The model server broke off the answer. What arrived is shown; try Regenerate.",
    local_model_busy: () => "The local model is busy with other requests. Try again in a moment.",
    csrf_invalid: () => "Your session expired. Please submit again.",
    sign_in_required: () => "Your sign-in has ended. Reload the page to sign in again.",
    request_timeout: () => "The request took too long to reach the server. Please submit again.",
  };

  function friendly(err) {
    const make = MESSAGES[err.code];
    return make ? make(err) : (err.message || "Something went wrong.");
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  // --- safe rendering ---------------------------------------------------------
  function inline(parent, line) {
    const re = /(`[^`\n]+`|\*\*[^*\n]+\*\*)/g;
    let last = 0;
    for (const m of line.matchAll(re)) {
      if (m.index > last) parent.appendChild(document.createTextNode(line.slice(last, m.index)));
      const tok = m[0];
      const el = document.createElement(tok.startsWith("`") ? "code" : "strong");
      el.textContent = tok.startsWith("`") ? tok.slice(1, -1) : tok.slice(2, -2);
      parent.appendChild(el);
      last = m.index + tok.length;
    }
    if (last < line.length) parent.appendChild(document.createTextNode(line.slice(last)));
  }

  function prose(parent, chunk) {
    for (const para of chunk.split(/\n\s*\n/)) {
      const lines = para.split("\n").filter((l) => l.trim());
      if (!lines.length) continue;
      const isList = lines.every((l) => /^\s*([-*+]|\d+[.)])\s+/.test(l));
      if (isList) {
        const list = document.createElement(/^\s*\d/.test(lines[0]) ? "ol" : "ul");
        for (const l of lines) {
          const li = document.createElement("li");
          inline(li, l.replace(/^\s*([-*+]|\d+[.)])\s+/, ""));
          list.appendChild(li);
        }
        parent.appendChild(list);
      } else {
        const p = document.createElement("p");
        lines.forEach((l, i) => {
          if (i) p.appendChild(document.createElement("br"));
          inline(p, l);
        });
        parent.appendChild(p);
      }
    }
  }

  function codeFigure(lang, code) {
    const fig = document.createElement("figure");
    fig.className = "codeblock streaming";
    const cap = document.createElement("figcaption");
    const label = document.createElement("span");
    label.textContent = lang || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    cap.append(label, copy);
    const pre = document.createElement("pre");
    pre.className = "code";
    const codeEl = document.createElement("code");
    codeEl.textContent = code;
    pre.appendChild(codeEl);
    fig.append(cap, pre);
    return fig;
  }

  function render() {
    scheduled = false;
    const frag = document.createDocumentFragment();
    let pos = 0;
    let index = 0;
    for (const m of text.matchAll(FENCE)) {
      prose(frag, text.slice(pos, m.index));
      if (blocks[index]) {
        const holder = document.createElement("div");
        holder.innerHTML = blocks[index]; // server HTML: Pygments output, escaped
        frag.appendChild(holder.firstElementChild);
      } else {
        frag.appendChild(codeFigure(m[1], m[2]));
      }
      index += 1;
      pos = m.index + m[0].length;
    }
    prose(frag, text.slice(pos));
    answer.replaceChildren(frag);
  }

  function schedule() {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  }

  // --- streaming ----------------------------------------------------------------
  function params() {
    const data = new FormData(form);
    const p = { prompt: String(data.get("prompt") || "") };
    const language = data.get("language");
    if (language) p.language = String(language);
    const model = data.get("model");
    if (model) p.model = String(model);
    const t = data.get("temperature");
    if (t !== null && t !== "") p.temperature = Number(t);
    const mt = data.get("max_tokens");
    if (mt !== null && mt !== "") p.max_tokens = Number(mt);
    return p;
  }

  function setBusy(busy) {
    stopButton.hidden = !busy;
    generateButton.disabled = busy;
    regenButton.hidden = busy || !lastParams;
    answer.classList.toggle("busy", busy);
  }

  function handle(event, started) {
    switch (event.type) {
      case "delta":
        text += event.text;
        schedule();
        break;
      case "block":
        blocks[event.index] = event.html;
        schedule();
        break;
      case "html": {
        const holder = document.createElement("div");
        holder.innerHTML = event.html; // server-rendered: escaped prose, Pygments code
        answer.replaceChildren(...holder.childNodes);
        scheduled = true; // no provisional render after the final one
        break;
      }
      case "done": {
        const u = event.usage || {};
        const secs = (performance.now() - started) / 1000;
        const tps = u.completion_tokens && secs > 0 ? (u.completion_tokens / secs).toFixed(1) : "?";
        stats.textContent = `First token ${Math.round(event.timing.ttft_ms)} ms · ${u.completion_tokens ?? "?"} tokens · ${tps} tokens/s · ${secs.toFixed(1)} s`;
        if (event.finish_reason === "length") {
          // Never a silent cut: the model stopped at the limit, not at the end.
          stats.textContent += ` · ${stats.dataset.cut}`;
        }
        stats.hidden = false;
        break;
      }
      case "error":
        showError(friendly(event));
        break;
      default:
        break; // pings
    }
  }

  async function generate(p, retried) {
    if (!p.prompt.trim()) {
      showError("Please describe the code you want.");
      return;
    }
    lastParams = p;
    text = "";
    blocks = [];
    errorBox.hidden = true;
    stats.hidden = true;
    answer.replaceChildren();
    controller = new AbortController();
    setBusy(true);
    const started = performance.now();
    const token = form.querySelector("input[name=csrf_token]").value;
    try {
      const response = await fetch("/ui/stream", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token, Accept: "application/x-ndjson, application/json" },
        body: JSON.stringify(p),
        signal: controller.signal,
      });
      if (!response.ok) {
        let err = { message: `The server answered ${response.status}.` };
        try {
          err = (await response.json()).error || err;
        } catch (_) { /* not JSON */ }
        if (err.csrf_token) {
          form.querySelector("input[name=csrf_token]").value = err.csrf_token;
          if (!retried) return generate(p, true);
        }
        if (response.headers.get("Retry-After") && !err.retry_after) err.retry_after = Number(response.headers.get("Retry-After"));
        showError(friendly(err));
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const line of lines) if (line) handle(JSON.parse(line), started);
      }
    } catch (e) {
      if (e.name === "AbortError") {
        stats.textContent = "Stopped.";
        stats.hidden = false;
      } else {
        showError("The connection to the server was lost. What arrived is shown.");
      }
    } finally {
      controller = null;
      setBusy(false);
      if (!scheduled) render();
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    generate(params(), false);
  });
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      if (!controller) generate(params(), false);
    }
  });
  stopButton.addEventListener("click", () => controller && controller.abort());
  regenButton.addEventListener("click", () => lastParams && generate(lastParams, false));
  answer.addEventListener("click", async (e) => {
    const button = e.target.closest("button.copy");
    if (!button) return;
    const code = button.closest("figure").querySelector("pre").textContent;
    try {
      await navigator.clipboard.writeText(code);
      button.textContent = "Copied";
    } catch (_) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
})();
