// Runs a Python answer in Pyodide (CPython compiled to WebAssembly), in this worker,
// off the page's thread and never on the server. The worker lives in the runner frame
// (static/runner.js), whose origin is opaque: the code has no cookies and cannot reach
// the app's routes. The page stops a run by removing the frame, and keeps another ready.
// Pyodide is served by the app (static/pyodide/<version>/, installed from npm with its
// integrity hash): nothing comes from another origin.

// The one standard-library-only runner: say so plainly where Pyodide would point to
// micropip, a dead end here (no package index is reachable from the runner).
const NO_PACKAGES = "Only Python's standard library is available here: packages cannot be installed.";
const NO_INPUT = "input() cannot read anything here: this runner has no keyboard. Put the values in the code instead.";

let ready = null;

// The runner calls this once, with the versioned folder of Pyodide's files.
export function load(indexURL) {
  ready = import(new URL("pyodide.mjs", indexURL).href)
    .then(({ loadPyodide }) => loadPyodide({ indexURL }))
    .then((pyodide) => {
      pyodide.setStdout({ batched: (text) => postMessage({ type: "out", text: text + "\n" }) });
      pyodide.setStderr({ batched: (text) => postMessage({ type: "err", text: text + "\n" }) });
      // No keyboard: input() ends at once (an EOFError, told in words below).
      pyodide.setStdin({ stdin: () => null });
      postMessage({ type: "ready" });
      return pyodide;
    });
  ready.catch(() => {}); // told on the first run
}

// A Python traceback without Pyodide's own frames (its loader, not the reader's code),
// and its last line in plain words where Pyodide's would mislead.
export function explain(message) {
  const lines = message.replace(/\n+$/, "").split("\n");
  const kept = [];
  for (let i = 0; i < lines.length; i += 1) {
    if (/^ {2}File "\/lib\/python[^"]*\/_pyodide\//.test(lines[i])) {
      while (i + 1 < lines.length && /^ {4}/.test(lines[i + 1])) i += 1; // its source lines
      continue;
    }
    kept.push(lines[i]);
  }
  const last = kept.findIndex((line) => /^\w*(Error|Exception)\b/.test(line) && !line.startsWith("Traceback"));
  const tail = last >= 0 ? kept.slice(last).join("\n") : "";
  const module = /^ModuleNotFoundError: (?:The module '([^']+)'|No module named '([^']+)')/.exec(tail);
  if (module) {
    const name = module[1] || module[2];
    return [...kept.slice(0, last), `ModuleNotFoundError: No module named '${name}'`, NO_PACKAGES].join("\n");
  }
  if (/^EOFError: EOF when reading a line/.test(tail)) {
    return [...kept.slice(0, last), `EOFError: ${NO_INPUT}`].join("\n");
  }
  return kept.join("\n");
}

// The worker's message handler (static/runner.js) calls this for each run.
export async function run(code) {
  let pyodide;
  try {
    pyodide = await ready;
  } catch (error) {
    postMessage({ type: "failed", text: `Python could not start: ${error.message}` });
    return;
  }
  postMessage({ type: "start" }); // the time limit counts from here, not from loading
  try {
    await pyodide.runPythonAsync(code);
    postMessage({ type: "done" });
  } catch (error) {
    postMessage({ type: "error", text: explain(String(error.message || error)) });
  }
}
