// The files an answer changed or made, drawn from its done event's `files` as the server
// draws them (templates/_file_changes.html): per file its name, status, downloads and a
// coloured unified diff. Model text reaches the page only through textContent.
"use strict";
window.fileChanges = (function () {
  const KINDS = { "@": "hunk", "+": "add", "-": "del" };
  const at = (answerId) => `/answers/${encodeURIComponent(answerId)}`;

  function link(href, text, options = {}) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (options.download) a.download = options.download;
    if (options.id) a.id = options.id;
    if (options.className) a.className = options.className;
    return a;
  }

  function diffOf(change) {
    if (!change.diff) {
      const p = document.createElement("p");
      p.setAttribute("role", "status");
      p.textContent = change.error || "This change is too large to show here.";
      return p;
    }
    const pre = document.createElement("pre");
    pre.className = "diff";
    pre.tabIndex = 0; // a wide diff scrolls: keyboards must reach it
    pre.setAttribute("aria-label", `Changes to ${change.name}`);
    for (const line of change.diff.replace(/\n$/, "").split("\n")) {
      const span = document.createElement("span");
      span.className = /^(--- |\+\+\+ )/.test(line) ? "file" : KINDS[line[0]] || "same";
      span.textContent = line;
      pre.append(span, "\n");
    }
    return pre;
  }

  function article(change, answerId) {
    const item = document.createElement("article");
    item.className = "change";
    item.dataset.file = change.name;
    const title = document.createElement("h3");
    const name = document.createElement("code");
    name.textContent = change.name;
    const status = document.createElement("span");
    status.className = `status ${change.status === "new" ? "new" : "changed"}`;
    status.textContent = change.status === "new" ? "new file" : "changed";
    title.append(name, " ", status);
    item.append(title);
    if (answerId) {
      const links = document.createElement("p");
      links.className = "downloads";
      const file = `${at(answerId)}/files/${encodeURIComponent(change.name)}`;
      const patch = `/a/${encodeURIComponent(answerId)}/patch/${encodeURIComponent(change.name)}`;
      links.append(
        link(file, `Download ${change.name}`, { download: change.name, className: "new-file" }),
        " · ",
        link(patch, "its patch", { className: "file-patch" }),
      );
      item.append(links);
    }
    item.append(diffOf(change));
    return item;
  }

  // Into `place` (emptied first): the changes, with downloads when the answer is stored.
  function show(place, changes, answerId) {
    place.replaceChildren();
    if (!changes || !changes.length) return;
    const section = document.createElement("section");
    section.className = "changes";
    section.setAttribute("aria-labelledby", "changes-title");
    const heading = document.createElement("h2");
    heading.id = "changes-title";
    heading.textContent = "Changed files";
    section.append(heading);
    if (answerId) {
      const all = document.createElement("p");
      all.className = "downloads";
      const hint = document.createElement("small");
      const command = document.createElement("code");
      command.textContent = "git apply";
      hint.append("(", command, " it in the files' folder)");
      all.append(
        "Download: ",
        link(`${at(answerId)}/changes.zip`, "all (zip)", { id: "changes-zip" }),
        " · ",
        link(`${at(answerId)}/changes.patch`, "the patch", { id: "changes-patch" }),
        " ",
        hint,
      );
      section.append(all);
    }
    for (const change of changes) section.append(article(change, answerId));
    place.append(section);
  }

  return { show };
})();
