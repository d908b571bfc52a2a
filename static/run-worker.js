// Runs a Python answer in Pyodide (CPython compiled to WebAssembly), in this worker,
// off the page's thread and never on the server. The worker lives in the runner frame
// (static/runner.js), whose origin is opaque: the code has no cookies and cannot reach
// the app's routes. The page removes the frame when a run passes its time limit.
// Pyodide is served by the app (static/pyodide/, installed from npm with its integrity
// hash): nothing comes from another origin. The worker imports this module, so its
// files are found from the module's URL, not the worker's (a blob's).
import { loadPyodide } from "./pyodide/pyodide.mjs";

const indexURL = new URL("./pyodide/", import.meta.url).href;
const ready = loadPyodide({ indexURL }).then((pyodide) => {
  pyodide.setStdout({ batched: (text) => postMessage({ type: "out", text: text + "\n" }) });
  pyodide.setStderr({ batched: (text) => postMessage({ type: "err", text: text + "\n" }) });
  return pyodide;
});

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
    postMessage({ type: "error", text: String(error.message || error) });
  }
}
