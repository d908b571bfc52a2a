// Runs a Python answer in Pyodide (CPython compiled to WebAssembly), in this worker,
// off the page's thread and never on the server. The page terminates the worker
// when a run passes its time limit. Pyodide is served by the app (static/pyodide/,
// installed from npm with its integrity hash): nothing comes from another origin.
import { loadPyodide } from "/static/pyodide/pyodide.mjs";

const ready = loadPyodide({ indexURL: "/static/pyodide/" }).then((pyodide) => {
  pyodide.setStdout({ batched: (text) => postMessage({ type: "out", text: text + "\n" }) });
  pyodide.setStderr({ batched: (text) => postMessage({ type: "err", text: text + "\n" }) });
  return pyodide;
});

onmessage = async (event) => {
  let pyodide;
  try {
    pyodide = await ready;
  } catch (error) {
    postMessage({ type: "failed", text: `Python could not start: ${error.message}` });
    return;
  }
  postMessage({ type: "start" }); // the time limit counts from here, not from loading
  try {
    await pyodide.runPythonAsync(event.data.code);
    postMessage({ type: "done" });
  } catch (error) {
    postMessage({ type: "error", text: String(error.message || error) });
  }
};
