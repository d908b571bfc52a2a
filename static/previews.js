// Preview and Run for web code, on every page that shows an answer: an HTML or SVG block
// (or CSS, with an HTML block beside it) gets Preview, a JavaScript block gets Run. Both
// happen in a frame of static/preview.html, sandboxed with an opaque origin and a policy
// that loads nothing (static/preview-frame.js, webapp/app.py): the code never acts as the
// reader, never reaches the app or the network. Loaded after codeblocks.js, which calls
// `decorate` on each block (app.js does for the blocks it closes).
"use strict";
(function () {
  const RUN_LIMIT_S = 5; // a JavaScript run is stopped after this
  // A drawn page that stops answering pings (a script that never ends) is removed.
  const PING_EVERY_MS = 1000;
  const HUNG_AFTER_MS = 4000;
  const PAGES = new Set(["html", "htm", "xhtml", "svg"]);
  const SCRIPTS = new Set(["javascript", "js", "mjs", "cjs", "node"]);
  const sessions = new Map(); // frame window -> its session's message handler

  const language = (fig) => ((fig.querySelector("figcaption span") || {}).textContent || "").trim().toLowerCase();
  const codeOf = (fig) => fig.querySelector("pre:not(.run-output)").textContent;
  const blocksOf = (fig) => [...(fig.closest(".answer") || document).querySelectorAll("figure.codeblock")];
  const isSvg = (fig) => /^\s*(<\?xml[^>]*>\s*)?(<!--[\s\S]*?-->\s*)*<svg[\s>]/i.test(codeOf(fig));
  const isPage = (fig) => PAGES.has(language(fig)) || (language(fig) === "xml" && isSvg(fig));

  function kindOf(fig) {
    if (isPage(fig)) return "preview";
    if (language(fig) === "css" && blocksOf(fig).some((other) => isPage(other) && !isSvg(other))) return "preview";
    if (SCRIPTS.has(language(fig))) return "run";
    return "";
  }

  function decorate(fig) {
    const kind = kindOf(fig);
    if (!kind || fig.querySelector("button.preview, button.run-js")) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = kind === "run" ? "run-js" : "preview";
    idle(button);
    fig.querySelector("button.copy").before(button);
  }

  function idle(button) {
    const run = button.classList.contains("run-js");
    button.textContent = run ? "Run" : "Preview";
    button.title = run
      ? `Run in your browser, isolated from this page, stopped after ${RUN_LIMIT_S} s`
      : "Draw it in your browser, isolated from this page (nothing loads from the network)";
    button.classList.remove("running");
  }

  // The page a Preview draws: an HTML block (or, for CSS, the HTML block nearest to it)
  // with the answer's stylesheets after it, and its scripts when the page names script
  // files the answer gave as blocks; an SVG alone on a blank page.
  function pageFor(fig) {
    const blocks = blocksOf(fig);
    const at = blocks.indexOf(fig);
    if (isSvg(fig)) {
      return `<!doctype html><html><head><meta charset="utf-8"><style>html,body{margin:0}</style></head><body>${codeOf(fig)}</body></html>`;
    }
    let html = fig;
    if (language(fig) === "css") {
      const pages = blocks.filter((b) => isPage(b) && !isSvg(b));
      html = pages.reduce((best, b) => (Math.abs(blocks.indexOf(b) - at) < Math.abs(blocks.indexOf(best) - at) ? b : best));
    }
    const markup = codeOf(html);
    const styles = language(fig) === "css" ? [fig] : blocks.filter((b) => language(b) === "css");
    let extra = styles.map((b) => `<style>${codeOf(b).replace(/<\/style/gi, "<\\/style")}</style>`).join("");
    if (/<script\b[^>]*\bsrc\s*=/i.test(markup)) {
      const scripts = blocks.filter((b) => SCRIPTS.has(language(b)));
      extra += scripts.map((b) => `<script>${codeOf(b).replace(/<\/script/gi, "<\\/script")}</script>`).join("");
    }
    return markup + extra;
  }

  function openFrame(title, hidden) {
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "allow-scripts"); // never with allow-same-origin
    frame.title = title;
    frame.hidden = hidden;
    frame.src = "/static/preview.html";
    return frame;
  }

  function send(frame, message) {
    frame.addEventListener("load", () => frame.contentWindow.postMessage(message, "*"), { once: true });
  }

  function note(place, text) {
    let out = place.querySelector("p.preview-note");
    if (!out) {
      out = document.createElement("p");
      out.className = "preview-note";
      out.setAttribute("role", "status");
      place.append(out);
    }
    out.textContent = text;
  }

  function preview(fig, button) {
    const shown = fig.querySelector("div.preview");
    if (shown) {
      shown.stop("");
      return;
    }
    const box = document.createElement("div");
    box.className = "preview";
    const number = blocksOf(fig).indexOf(fig) + 1;
    const frame = openFrame(`Preview of code block ${number}`, false);
    box.append(frame);
    fig.append(box);
    button.textContent = "Close preview";
    button.title = "Close this preview";
    button.classList.add("running");
    let answered = Date.now();
    let pinging = null;
    box.stop = (why) => {
      clearInterval(pinging);
      sessions.delete(frame.contentWindow);
      frame.remove();
      idle(button);
      if (why) note(box, why);
      else box.remove();
    };
    send(frame, { type: "show", markup: pageFor(fig) });
    frame.addEventListener("load", () => {
      sessions.set(frame.contentWindow, (m) => { if (m.type === "pong") answered = Date.now(); });
      answered = Date.now();
      pinging = setInterval(() => {
        if (Date.now() - answered > HUNG_AFTER_MS) box.stop("The preview stopped responding (a script that never ends?), so it was stopped.");
        else if (frame.contentWindow) frame.contentWindow.postMessage({ type: "ping" }, "*");
      }, PING_EVERY_MS);
    }, { once: true });
    // The frame loads twice: preview.html, then the page written into it. A third load is
    // the page navigating its frame away (to the network, say): it is not shown.
    let loads = 0;
    frame.addEventListener("load", () => {
      loads += 1;
      if (loads > 2) box.stop("The preview tried to leave its page, so it was stopped.");
    });
  }

  function run(fig, button) {
    if (button.stop) {
      button.stop("\nStopped.");
      return;
    }
    let out = fig.querySelector("pre.run-output");
    if (!out) {
      out = document.createElement("pre");
      out.className = "run-output";
      out.setAttribute("role", "log");
      out.setAttribute("aria-label", "Output");
      out.tabIndex = 0;
      fig.append(out);
    }
    out.textContent = "Running…\n";
    const frame = openFrame("JavaScript runner", true);
    document.body.append(frame);
    button.textContent = "Stop";
    button.title = "Stop this run";
    button.classList.add("running");
    let timer = null;
    let started = false;
    button.stop = (why) => {
      clearTimeout(timer);
      sessions.delete(frame.contentWindow);
      frame.remove(); // and with it the worker and whatever it was running
      delete button.stop;
      idle(button);
      if (why) out.append(why);
    };
    timer = setTimeout(() => button.stop(`\nStopped: the run passed ${RUN_LIMIT_S} s.`), RUN_LIMIT_S * 1000);
    frame.addEventListener("load", () => {
      sessions.set(frame.contentWindow, (m) => {
        if (m.type === "start") {
          started = true;
          out.textContent = "";
        } else if (m.type === "out") {
          out.append(m.text);
        } else if (m.type === "err") {
          const err = document.createElement("span");
          err.className = "run-error";
          err.textContent = m.text;
          out.append(err);
        } else if (m.type === "done") {
          button.stop(started && !out.textContent ? "(no output)" : "");
        }
      });
    }, { once: true });
    send(frame, { type: "run", code: codeOf(fig) });
  }

  window.addEventListener("message", (event) => {
    const handle = sessions.get(event.source);
    if (handle && event.data && typeof event.data === "object") handle({ type: String(event.data.type), text: String(event.data.text ?? "") });
  });
  document.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest(".answer button.preview, .answer button.run-js");
    if (!button) return;
    const fig = button.closest("figure");
    if (button.classList.contains("preview")) preview(fig, button);
    else run(fig, button);
  });
  window.codeBlocks.decorators.push(decorate);
})();
