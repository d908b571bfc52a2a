// Code blocks on every page that shows an answer (the form's, an answer's own, a shared
// one): Copy, and Run for Python where Pyodide is installed. Loaded before previews.js
// (Preview and Run for web code, which adds itself to `decorators`) and app.js, which
// streams answers and calls codeBlocks.decorate on each block it closes.
"use strict";
window.codeBlocks = (function () {
  document.documentElement.classList.add("js");
  // --- running Python in the browser (static/runner.js, static/run-worker.js) --------
  // The code runs in a sandboxed frame with an opaque origin, never at this page's: it
  // must not act as the reader (their answers, share links, the CSRF token). The frame
  // and this page talk only by postMessage.
  const RUN_LIMIT_S = 10;
  const PYTHON = new Set(["python", "py", "python3"]);
  // Pyodide's versioned folder, where the server has it installed: else no Run at all.
  const holder = document.querySelector("[data-pyodide]");
  const PYODIDE = holder ? holder.dataset.pyodide : "";
  let runner = null; // { frame, loaded, ready }: a warm frame, reused until a run is stopped
  let onRunnerMessage = null; // the current run's
  window.addEventListener("message", (event) => {
    if (!runner || event.source !== runner.frame.contentWindow) return;
    if (event.data && event.data.type === "ready") {
      runner.ready = true;
      runner.frame.dataset.ready = "true";
    }
    if (onRunnerMessage) onRunnerMessage(event.data);
  });

  function startRunner() {
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "allow-scripts"); // never with allow-same-origin
    frame.hidden = true;
    frame.title = "Python runner";
    frame.src = "/static/runner.html";
    const loaded = new Promise((resolve) => frame.addEventListener("load", resolve, { once: true }));
    document.body.appendChild(frame);
    // Pyodide starts loading now, before any run asks for it.
    loaded.then(() => frame.contentWindow.postMessage({ type: "load", pyodide: PYODIDE }, "*"));
    return { frame, loaded, ready: false };
  }

  function addRunButton(fig) {
    if (!PYODIDE) return;
    const label = fig.querySelector("figcaption span");
    if (!label || !PYTHON.has(label.textContent.trim().toLowerCase())) return;
    if (fig.querySelector("button.run")) return;
    const run = document.createElement("button");
    run.type = "button";
    run.className = "run";
    run.textContent = "Run";
    run.title = `Run in your browser (Pyodide), stopped after ${RUN_LIMIT_S} s`;
    fig.querySelector("button.copy").before(run);
  }

  function runCode(fig, button) {
    let out = fig.querySelector("pre.run-output");
    if (!out) {
      out = document.createElement("pre");
      out.className = "run-output";
      out.setAttribute("role", "log");
      out.setAttribute("aria-label", "Output");
      out.tabIndex = 0;
      fig.appendChild(out);
    }
    if (!runner) runner = startRunner();
    out.textContent = runner.ready ? "Running…\n" : "Starting Python (the first run takes a few seconds)…\n";
    const current = runner;
    let timer = null;
    let started = false;
    // While it runs, the button stops it.
    button.textContent = "Stop";
    button.classList.add("running");
    button.title = "Stop this run";
    const finish = (note) => {
      clearTimeout(timer);
      if (onRunnerMessage === listen) onRunnerMessage = null;
      if (stopRun === stop) stopRun = null;
      if (note) out.appendChild(document.createTextNode(note));
      button.textContent = "Run";
      button.classList.remove("running");
      button.title = `Run in your browser (Pyodide), stopped after ${RUN_LIMIT_S} s`;
    };
    const stop = (why, warm = true) => {
      current.frame.remove(); // and with it the worker and whatever it was running
      if (runner === current) runner = warm ? startRunner() : null; // the next run starts warm
      finish(why);
    };
    stopRun = stop;
    timer = setTimeout(() => stop("\nPython did not start in time.", false), 60000);
    const listen = (m) => {
      if (m.type === "start") {
        started = true;
        out.textContent = "";
        clearTimeout(timer);
        timer = setTimeout(() => stop(`\nStopped: the run passed ${RUN_LIMIT_S} s.`), RUN_LIMIT_S * 1000);
      } else if (m.type === "out" || m.type === "err") {
        out.appendChild(document.createTextNode(m.text));
      } else if (m.type === "done") {
        finish(started && !out.textContent ? "(no output)" : "");
      } else if (m.type === "error" || m.type === "failed") {
        const err = document.createElement("span");
        err.className = "run-error";
        err.textContent = m.text;
        out.appendChild(err);
        if (m.type === "failed") stop("", false); // a fresh frame tries again on the next Run
        else finish("");
      }
    };
    onRunnerMessage = listen;
    const code = fig.querySelector("pre:not(.run-output)").textContent;
    current.loaded.then(() => current.frame.contentWindow.postMessage({ type: "run", code }, "*"));
  }
  let stopRun = null; // the run in progress's stop, if one is

  async function copy(button) {
    const pre = button.closest("figure").querySelector("pre:not(.run-output)");
    const code = pre.textContent;
    if (!code.trim()) {
      button.textContent = "Nothing to copy yet"; // a block that just opened: the clipboard is left alone
    } else {
      try {
        await navigator.clipboard.writeText(code);
        button.textContent = "Copied";
      } catch (_) {
        // No clipboard here (a page over plain HTTP, say): the code is selected for Ctrl+C.
        const range = document.createRange();
        range.selectNodeContents(pre);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        button.textContent = "Copy failed: the code is selected";
      }
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  const api = {
    // A closed block's buttons: Python's Run here, others from `decorators`.
    decorate: (fig) => {
      addRunButton(fig);
      for (const add of api.decorators) add(fig);
    },
    decorators: [],
    // Set by a page that streams: brings what has arrived into the page before a Copy.
    beforeCopy: () => {},
  };
  document.addEventListener("click", (e) => {
    if (!e.target.closest || !e.target.closest(".answer")) return;
    const run = e.target.closest("button.run");
    if (run && run.classList.contains("running")) {
      if (stopRun) stopRun("\nStopped.");
      return;
    }
    if (run) {
      if (stopRun) stopRun("\nStopped: another run started."); // one run at a time
      runCode(run.closest("figure"), run);
      return;
    }
    const button = e.target.closest("button.copy");
    if (!button) return;
    api.beforeCopy(); // what has arrived, not what the last frame showed
    copy(button);
  });
  // A stored answer's blocks (or a shared one's) can run too.
  const blocksNow = () => document.querySelectorAll(".answer figure.codeblock").forEach(api.decorate);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", blocksNow);
  else blocksNow();
  return api;
})();
