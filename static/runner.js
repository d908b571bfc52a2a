// The runner frame (static/runner.html): where the page's Run button sends code. Its
// origin is opaque (its own CSP says `sandbox allow-scripts`, and the page frames it
// with sandbox="allow-scripts"), so the code has no cookies, no storage, no way to the
// page or to top, and its CSP lets it fetch only Pyodide's files. The page and this
// frame talk only by postMessage: first `load` (where Pyodide is), then `run`s. The
// Python runs in a worker in here, so an endless loop never freezes the page; the page
// stops a run by removing the frame.
"use strict";
(function () {
  const page = window.parent;
  // The page's origin is this URL's; this document's own origin is "null".
  const pageOrigin = new URL(location.href).origin;
  const pyodideRoot = new URL("pyodide/", location.href).href;
  const tell = (type, text) => page.postMessage({ type, text }, pageOrigin);
  let worker = null;

  // A worker of an opaque origin must come from a blob URL, and a classic one: Chromium
  // refuses a module worker there. It imports the real script (a cross-origin load the
  // app allows for its runner files alone); a message that comes first waits for it.
  function start(indexURL) {
    const script = JSON.stringify(new URL("run-worker.js", location.href).href);
    const boot = `const runner = import(${script}).then((m) => { m.load(${JSON.stringify(indexURL)}); return m; });
onmessage = (event) => runner.then((m) => m.run(event.data.code), (error) =>
  postMessage({ type: "failed", text: "Python could not start: " + error.message }));`;
    worker = new Worker(URL.createObjectURL(new Blob([boot], { type: "text/javascript" })));
    // The run's code may post anything: the page gets two strings.
    worker.onmessage = (event) => {
      const m = event.data;
      if (m && typeof m === "object") tell(String(m.type), String(m.text ?? ""));
    };
    worker.onerror = () => tell("failed", "Python could not start here.");
  }

  window.addEventListener("message", (event) => {
    if (event.source !== page || !event.data || typeof event.data !== "object") return;
    const m = event.data;
    if (m.type === "load" && !worker) {
      // Only a folder of this app's Pyodide (the CSP would refuse any other anyway).
      const indexURL = new URL(String(m.pyodide), location.href).href;
      if (indexURL.startsWith(pyodideRoot) && indexURL.endsWith("/")) start(indexURL);
      else tell("failed", "Python could not start here.");
    } else if (m.type === "run" && worker) {
      worker.postMessage({ code: String(m.code) });
    }
  });
})();
