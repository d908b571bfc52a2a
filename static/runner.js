// The runner frame (static/runner.html): where the page's Run button sends code. Its
// origin is opaque (its own CSP says `sandbox allow-scripts`, and the page frames it
// with sandbox="allow-scripts"), so the code has no cookies, no storage, no way to the
// page or to top, and its CSP lets it fetch only Pyodide's files. The page and this
// frame talk only by postMessage. The Python runs in a worker in here, so an endless
// loop never freezes the page; the page stops a run by removing the frame.
"use strict";
(function () {
  const page = window.parent;
  // The page's origin is this URL's; this document's own origin is "null".
  const pageOrigin = new URL(location.href).origin;
  // A worker of an opaque origin must come from a blob URL, and a classic one: Chromium
  // refuses a module worker there. It imports the real script (a cross-origin load the
  // app allows for its runner files alone); a message that comes first waits for it.
  const script = JSON.stringify(new URL("run-worker.js", location.href).href);
  const boot = `const runner = import(${script});
onmessage = (event) => runner.then((m) => m.run(event.data.code), (error) =>
  postMessage({ type: "failed", text: "Python could not start: " + error.message }));`;
  const worker = new Worker(URL.createObjectURL(new Blob([boot], { type: "text/javascript" })));
  const tell = (type, text) => page.postMessage({ type, text }, pageOrigin);

  // The run's code may post anything: the page gets two strings.
  worker.onmessage = (event) => {
    const m = event.data;
    if (m && typeof m === "object") tell(String(m.type), String(m.text ?? ""));
  };
  worker.onerror = () => tell("failed", "Python could not start here.");
  window.addEventListener("message", (event) => {
    if (event.source !== page) return;
    worker.postMessage({ code: String(event.data && event.data.code) });
  });
})();
