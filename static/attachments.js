// Files attached to the prompt: picked, dropped on the prompt, or a long paste turned into
// one. Each is shown with its name, size and an estimate of its tokens, and can be removed
// before sending; app.js sends them as `files` in the JSON (without the script, the form
// posts them itself, as multipart). The bounds are the server's (MAX_FILES, MAX_FILE_BYTES,
// from the form's data attributes), checked here too so a refusal comes before sending.
"use strict";
window.attachments = (function () {
  // The page's estimate of a text's tokens (a word or a sign each, one more per 8 letters
  // of a long word), the same for the prompt and its files. The server counts exactly.
  function tokensOf(text) {
    let tokens = 0;
    for (const m of text.matchAll(/[\p{L}\p{N}]+|\S/gu)) tokens += 1 + Math.floor((m[0].length - 1) / 8);
    return tokens;
  }

  const box = document.getElementById("attach");
  // MAX_FILES=0: no picker, nothing attached.
  if (!box) return { files: () => [], tokens: () => 0, bytes: () => 0, restore: () => {}, tokensOf };
  const form = box.closest("form");
  const picker = document.getElementById("files");
  const list = document.getElementById("attachments");
  const note = document.getElementById("files-note");
  const prompt = form.elements.namedItem("prompt");
  const MAX_FILES = Number(box.dataset.maxFiles) || 0;
  const MAX_BYTES = Number(box.dataset.maxFileBytes) || Infinity;
  // A paste this long is a file, not a prompt (as llama.cpp's web UI does).
  const PASTE_CHARS = 1500;
  const PASTE_LINES = 40;
  const EXTENSIONS = {
    Python: "py", JavaScript: "js", TypeScript: "ts", Go: "go", Rust: "rs", Java: "java", C: "c",
    "C++": "cpp", "C#": "cs", Ruby: "rb", PHP: "php", Kotlin: "kt", Swift: "swift", Bash: "sh",
    SQL: "sql", HTML: "html", CSS: "css",
  };
  const encoder = new TextEncoder();
  const bounds = [...note.childNodes]; // what the note says when nothing went wrong
  let files = []; // { name, content, bytes }
  let pasted = 0;

  // As the server's `size` filter says it.
  function sizeOf(bytes) {
    if (bytes < 1000) return `${bytes} byte${bytes === 1 ? "" : "s"}`;
    const kilo = bytes / 1000;
    return kilo < 10 ? `${kilo.toFixed(1).replace(/\.0$/, "")} KB` : `${Math.round(kilo).toLocaleString("en")} KB`;
  }

  function tell(message) {
    if (message) note.textContent = message;
    else note.replaceChildren(...bounds);
    note.classList.toggle("over", Boolean(message));
  }

  function changed() {
    list.replaceChildren(...files.map(chip));
    list.hidden = !files.length;
    prompt.dispatchEvent(new Event("input")); // the size counter counts the files too
  }

  function chip(file) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    const size = document.createElement("small");
    size.textContent = `${sizeOf(file.bytes)} · about ${tokensOf(file.content).toLocaleString("en")} tokens`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${file.name}`);
    remove.title = `Remove ${file.name}`;
    remove.addEventListener("click", () => {
      const at = files.indexOf(file);
      files = files.filter((f) => f !== file);
      tell("");
      changed();
      // Focus goes to the next chip's Remove, else the picker: never to the page.
      const next = list.querySelectorAll("button.remove")[Math.min(at, files.length - 1)];
      (next || picker).focus();
    });
    item.append(name, " ", size, " ", remove);
    return item;
  }

  // A file kept, or the reason it is not. A file named as one already attached replaces it.
  function add(name, content, bytes) {
    if (bytes > MAX_BYTES) return `“${name}” is ${sizeOf(bytes)}, over the limit of ${sizeOf(MAX_BYTES)} per file.`;
    if (content.includes("\u0000")) return `“${name}” looks like a binary file: only text files can be attached.`;
    const at = files.findIndex((f) => f.name === name);
    if (at < 0 && files.length >= MAX_FILES) return `“${name}” was not attached: at most ${MAX_FILES} files.`;
    const file = { name, content: content.replace(/^\uFEFF/, ""), bytes };
    if (at < 0) files.push(file);
    else files[at] = file;
    return "";
  }

  async function addFiles(picked) {
    const refused = [];
    for (const f of picked) {
      if (f.size > MAX_BYTES) {
        refused.push(add(f.name, "", f.size));
        continue;
      }
      let content;
      try {
        content = new TextDecoder("utf-8", { fatal: true }).decode(await f.arrayBuffer());
      } catch (_) {
        refused.push(`“${f.name}” is not a text file (UTF-8): only text files can be attached.`);
        continue;
      }
      const why = add(f.name, content, f.size);
      if (why) refused.push(why);
    }
    tell(refused.join(" "));
    changed();
  }

  picker.addEventListener("change", () => {
    const picked = [...picker.files];
    picker.value = ""; // the list holds them now: the form itself sends none
    addFiles(picked);
  });

  // Files dropped on the prompt are attached; dropped text stays text.
  const carriesFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  prompt.addEventListener("dragover", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    prompt.classList.add("dropping");
  });
  prompt.addEventListener("dragleave", () => prompt.classList.remove("dropping"));
  prompt.addEventListener("drop", (e) => {
    prompt.classList.remove("dropping");
    if (!carriesFiles(e) || !e.dataTransfer.files.length) return;
    e.preventDefault();
    addFiles([...e.dataTransfer.files]);
  });

  // A long paste becomes a file, named for the form's language (pasted-1.py), so the prompt
  // stays the question.
  prompt.addEventListener("paste", (e) => {
    const text = e.clipboardData ? e.clipboardData.getData("text/plain") : "";
    if (text.length <= PASTE_CHARS && text.split("\n").length <= PASTE_LINES) return;
    e.preventDefault();
    const language = form.elements.namedItem("language");
    const extension = EXTENSIONS[language ? language.value : ""] || "txt";
    let name;
    do {
      pasted += 1;
      name = `pasted-${pasted}.${extension}`;
    } while (files.some((f) => f.name === name));
    const why = add(name, text, encoder.encode(text).length);
    tell(why || `The long paste became an attached file, ${name}.`);
    changed();
  });

  return {
    files: () => files.map(({ name, content }) => ({ name, content })),
    tokens: () => files.reduce((sum, f) => sum + tokensOf(f.content), 0),
    bytes: () => files.reduce((sum, f) => sum + f.bytes, 0),
    // A request sent before a reload comes back with its files.
    restore: (sent) => {
      files = [];
      for (const f of sent || []) add(String(f.name), String(f.content), encoder.encode(String(f.content)).length);
      changed();
    },
    tokensOf,
  };
})();
