// The preview frame (static/preview.html): where the page's Preview and Run buttons send
// web code. Its origin is opaque (its CSP says `sandbox allow-scripts`, and the page frames
// it with sandbox="allow-scripts"), so the code has no cookies, no storage and no way to
// the page or to top; its CSP lets it load nothing from anywhere (no fetch, no image from
// the network, not the app's routes). The page and this frame talk only by postMessage,
// once per frame: `show` (a page to draw: the frame becomes it) or `run` (JavaScript for a
// worker made here, so an endless loop never freezes a page; the page stops it by removing
// the frame).
"use strict";
(function () {
  const page = window.parent;
  // The page's origin is this URL's; this document's own origin is "null".
  const pageOrigin = new URL(location.href).origin;
  const tell = (message) => page.postMessage(message, pageOrigin);
  // Output is bounded here, so a loop that logs cannot flood the page with messages.
  const MAX_OUTPUT = 64 * 1024;

  // The frame becomes the page (its scripts run as it is written). Writing erases this
  // script's listeners, so it listens again after: to the page's pings, answered while the
  // frame's thread is free; one that stops answering (a loop in its script) is removed.
  function show(markup) {
    document.open();
    document.write(markup);
    document.close();
    window.addEventListener("message", (event) => {
      if (event.source === page && event.data && event.data.type === "ping") tell({ type: "pong" });
    });
  }

  // What runs first in the worker: console and errors go to the page as text, batched and
  // bounded; timers are counted, so the run ends when its code and its timers are done.
  function prelude(codeUrl) {
    return `"use strict";
(() => {
  const MAX = ${MAX_OUTPUT};
  let sent = 0, buffered = "", cut = false, finished = false;
  const post = self.postMessage.bind(self);
  const flush = () => { if (buffered) { post({ type: "out", text: buffered }); buffered = ""; } };
  const write = (kind, text) => {
    if (cut) return;
    if (sent + text.length > MAX) { text = text.slice(0, MAX - sent) + "\\n(output cut at 64 KB)\\n"; cut = true; }
    sent += text.length;
    if (kind === "err") { flush(); post({ type: "err", text }); } else buffered += text;
    if (buffered.length > 4096) flush();
  };
  const shown = (value) => {
    if (typeof value === "string") return value;
    if (value instanceof Error) return value.stack || String(value);
    try { const json = JSON.stringify(value); if (json !== undefined) return json; } catch (_) { /* cyclic */ }
    return String(value);
  };
  const line = (kind) => (...args) => write(kind, args.map(shown).join(" ") + "\\n");
  for (const name of ["log", "info", "debug", "table", "dir"]) console[name] = line("out");
  console.warn = line("err");
  console.error = line("err");
  const fail = (error) => write("err", (error && error.stack ? error.stack : String(error)) + "\\n");
  self.addEventListener("error", (e) => { e.preventDefault(); fail(e.error || e.message); check(); });
  self.addEventListener("unhandledrejection", (e) => { e.preventDefault(); fail(e.reason); check(); });
  const { setTimeout: later, clearTimeout: never, setInterval: every, clearInterval: stop } = self;
  const live = new Set();
  function check() { later(() => { flush(); if (!finished && !live.size) { finished = true; post({ type: "done" }); } }, 0); }
  self.setTimeout = (fn, ms, ...args) => {
    const id = later(() => { live.delete(id); try { typeof fn === "function" ? fn(...args) : null; } finally { check(); } }, ms);
    live.add(id);
    return id;
  };
  self.clearTimeout = (id) => { live.delete(id); never(id); check(); };
  self.setInterval = (fn, ms, ...args) => {
    const id = every(() => { try { typeof fn === "function" ? fn(...args) : null; } finally { flush(); } }, ms);
    live.add(id);
    return id;
  };
  self.clearInterval = (id) => { live.delete(id); stop(id); check(); };
  self.onmessage = null;
  post({ type: "start" });
  try { importScripts(${JSON.stringify(codeUrl)}); } catch (error) { fail(error); }
  check();
})();`;
  }

  function run(code) {
    const url = (text) => URL.createObjectURL(new Blob([text], { type: "text/javascript" }));
    const worker = new Worker(url(prelude(url(code))));
    // The code may post anything: the page gets a type and a string, and no more text than
    // the bound, however the code posts it.
    let relayed = 0;
    worker.onmessage = (event) => {
      const m = event.data;
      if (!m || typeof m !== "object") return;
      const text = String(m.text ?? "").slice(0, Math.max(0, MAX_OUTPUT + 100 - relayed));
      relayed += text.length;
      if (text || m.type === "start" || m.type === "done") tell({ type: String(m.type), text });
    };
    worker.onerror = (event) => {
      event.preventDefault();
      tell({ type: "err", text: `${event.message || "The script could not start."}\n` });
      tell({ type: "done" });
    };
  }

  window.addEventListener("message", (event) => {
    if (event.source !== page || !event.data || typeof event.data !== "object") return;
    const m = event.data;
    if (m.type === "show") show(String(m.markup));
    else if (m.type === "run") run(String(m.code));
  });
})();
