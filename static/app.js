// The page's script: streams NDJSON from /ui/stream and renders it safely.
// Model text only ever reaches the DOM through textContent; the one HTML we
// insert is what the server produced (Pygments, and Markdown with raw HTML off).
//
// Rendering is incremental: finished paragraphs and closed code blocks are put
// in the page once and never touched again (a Copy press, a focus or a sideways
// scroll in them survives the stream); only the growing tail is updated, at
// most once per animation frame.
"use strict";
(function () {
  document.documentElement.classList.add("js");
  const form = document.getElementById("prompt-form");
  if (!form) return;
  const answer = document.getElementById("answer");
  const errorBox = document.getElementById("error");
  const stats = document.getElementById("stats");
  const status = document.getElementById("status");
  const stopButton = document.getElementById("stop");
  const regenButton = document.getElementById("regenerate");
  const generateButton = document.getElementById("generate");
  const notice = document.getElementById("notice");
  // Looked up when used: the answer's page replaces it when the answer ends (refreshActions).
  const changesBox = () => document.getElementById("changes");
  // On an answer's page: its id, and its stored text, which a Continue carries on.
  const pageAnswer = answer.dataset.answerId || "";
  const source = document.getElementById("answer-source");
  // Looked up when used: the answer's actions are replaced when it ends (refreshActions).
  const continueForm = () => document.getElementById("continue-form");
  const CLOSING_FENCE = /^```[ \t]*$/m;

  let controller = null;
  let text = "";
  let scheduled = false;
  let final = false; // the server's formatted answer is in place: no more renders
  // Incremental state: text before `settledTo` is in the page for good.
  let settledTo = 0;
  let tail = null; // { kind: "prose" | "code", el, code?, index? }
  let figures = []; // code block index -> its <figure>
  let blocks = []; // code block index -> the server's highlighted HTML
  let follow = true;
  let seed = ""; // a Continue starts from the stored text

  const MESSAGES = {
    upstream_rate_limited: (e) => "The model is rate limited" + (e.retry_after ? `; try again in ${Math.ceil(e.retry_after)} s.` : "; try again shortly."),
    rate_limited: (e) => "Too many requests" + (e.retry_after ? `; try again in ${Math.ceil(e.retry_after)} s.` : "."),
    first_token_timeout: () => "The model took too long to start answering. Try again, or a shorter prompt.",
    idle_timeout: () => "The model stopped sending mid-answer. What arrived is shown; try Regenerate.",
    deadline_exceeded: () => "The answer took longer than the server allows. What arrived is shown.",
    prompt_too_long: (e) => e.message,
    upstream_auth: () => "The server's model API key was rejected. Please tell the operator.",
    upstream_unavailable: () => "The model server is unavailable right now. Try again in a moment.",
    upstream_unreachable: () => "The model server could not be reached. Try again in a moment.",
    upstream_disconnected: () => "The model server broke off the answer. What arrived is shown; try Regenerate.",
    local_model_busy: () => "The local model is busy with other requests. Try again in a moment.",
    csrf_invalid: () => "Your session expired. Please submit again.",
    sign_in_required: () => "Your sign-in has ended. Reload the page to sign in again.",
    request_timeout: () => "The request took too long to reach the server. Please submit again.",
    body_too_large: () => "The prompt is too long for this server: shorten it.",
  };

  function friendly(err) {
    const make = MESSAGES[err.code];
    return make ? make(err) : (err.message || "Something went wrong.");
  }

  function showError(message, requestId) {
    errorBox.textContent = message;
    if (requestId) {
      const small = document.createElement("small");
      small.className = "request-id";
      small.textContent = ` (request id ${requestId})`;
      errorBox.appendChild(small);
    }
    errorBox.hidden = false;
  }

  function markInvalid(err) {
    // The server names the field it refused: mark it and go there.
    const field = err.field && form.elements.namedItem(err.field);
    if (field && field.focus) {
      field.setAttribute("aria-invalid", "true");
      field.setAttribute("aria-describedby", "error");
      field.focus();
    }
  }

  function clearInvalid() {
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function announce(message) {
    status.textContent = message;
  }

  // --- safe rendering ---------------------------------------------------------
  function inline(parent, line) {
    const re = /(`[^`\n]+`|\*\*[^*\n]+\*\*)/g;
    let last = 0;
    for (const m of line.matchAll(re)) {
      if (m.index > last) parent.appendChild(document.createTextNode(line.slice(last, m.index)));
      const tok = m[0];
      const el = document.createElement(tok.startsWith("`") ? "code" : "strong");
      el.textContent = tok.startsWith("`") ? tok.slice(1, -1) : tok.slice(2, -2);
      parent.appendChild(el);
      last = m.index + tok.length;
    }
    if (last < line.length) parent.appendChild(document.createTextNode(line.slice(last)));
  }

  function prose(parent, chunk) {
    for (const para of chunk.split(/\n\s*\n/)) {
      const lines = para.split("\n").filter((l) => l.trim());
      if (!lines.length) continue;
      const isList = lines.every((l) => /^\s*([-*+]|\d+[.)])\s+/.test(l));
      if (isList) {
        const list = document.createElement(/^\s*\d/.test(lines[0]) ? "ol" : "ul");
        for (const l of lines) {
          const li = document.createElement("li");
          inline(li, l.replace(/^\s*([-*+]|\d+[.)])\s+/, ""));
          list.appendChild(li);
        }
        parent.appendChild(list);
      } else {
        const p = document.createElement("p");
        lines.forEach((l, i) => {
          if (i) p.appendChild(document.createElement("br"));
          inline(p, l);
        });
        parent.appendChild(p);
      }
    }
  }

  // --- Markdown while streaming (markdown-it, vendored from npm), by the server's rules ---
  // webapp/render.py renders the final answer with markdown-it-py, the same parser: so the
  // settled paragraphs look now as they will at the end. Raw HTML is off (model text is
  // escaped), links go only to http(s), and what comes out is checked against a short list
  // of tags and attributes before it reaches the page.
  const TOP_HEADING = 2; // render.py's ANSWER_TOP_HEADING: the page's title is the h1
  const markdown = window.markdownit ? makeMarkdown(window.markdownit) : null;
  const WEB_LINK = /^https?:\/\//i;
  const ALLOWED = {
    P: [], H2: [], H3: [], H4: [], H5: [], H6: [], UL: [], OL: ["start"], LI: [], BR: [], HR: [],
    STRONG: [], EM: [], S: [], CODE: ["class"], PRE: [], BLOCKQUOTE: [], A: ["href", "rel"],
    IMG: ["src", "alt"], DIV: ["class", "tabindex"], TABLE: [], THEAD: [], TBODY: [], TR: [],
    TH: [], TD: [],
  };
  let outline = { source: 0, shown: TOP_HEADING - 1 }; // the settled prose's headings so far

  function makeMarkdown(markdownit) {
    const md = markdownit("commonmark", { html: false, linkify: false }).enable(["table", "strikethrough"]);
    md.validateLink = (url) => WEB_LINK.test(url.trim());
    const render = (tokens, i, options, env, self) => self.renderToken(tokens, i, options);
    md.renderer.rules.link_open = (tokens, i, options, env, self) => {
      tokens[i].attrSet("rel", "noopener noreferrer");
      return render(tokens, i, options, env, self);
    };
    md.renderer.rules.table_open = (...args) => '<div class="table-scroll" tabindex="0">' + render(...args);
    md.renderer.rules.table_close = (...args) => render(...args) + "</div>";
    return md;
  }

  // render.py's _Outline: the first heading at the top level, each next one keeping its
  // step from the one before but never more than one deeper, nor above the top.
  function relevel(html, state) {
    let shown = state.shown;
    const out = html.replace(/<(\/?)h([1-6])/g, (_, closing, level) => {
      if (!closing) {
        const source = Number(level);
        const step = state.source ? source - state.source : 1;
        state.source = source;
        shown = Math.max(TOP_HEADING, Math.min(shown + 1, shown + step, 6));
      }
      return `<${closing}h${shown}`;
    });
    state.shown = shown;
    return out;
  }

  // Only the tags and attributes Markdown makes: anything else becomes its text.
  function cleaned(html) {
    const holder = document.createElement("template");
    holder.innerHTML = html; // inert: a template's content runs nothing and loads nothing
    for (const el of [...holder.content.querySelectorAll("*")]) {
      const allowed = ALLOWED[el.tagName];
      if (!allowed) {
        el.replaceWith(document.createTextNode(el.textContent));
        continue;
      }
      for (const attr of [...el.attributes]) {
        const web = attr.name !== "href" && attr.name !== "src" ? true : WEB_LINK.test(attr.value);
        if (!allowed.includes(attr.name) || !web) el.removeAttribute(attr.name);
      }
    }
    return holder.content;
  }

  function markdownProse(parent, chunk, state) {
    parent.appendChild(cleaned(relevel(markdown.render(chunk), state)));
  }

  function codeFigure(lang) {
    const fig = document.createElement("figure");
    fig.className = "codeblock streaming";
    const cap = document.createElement("figcaption");
    const label = document.createElement("span");
    label.textContent = lang || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    cap.append(label, copy);
    const pre = document.createElement("pre");
    pre.className = "code";
    pre.tabIndex = 0; // a wide block scrolls: keyboards must reach it
    pre.appendChild(document.createElement("code"));
    fig.append(cap, pre);
    return fig;
  }

  function setCode(fig, code) {
    const el = fig.querySelector("pre code");
    if (el && el.textContent !== code) el.textContent = code;
  }


  function applyServerBlock(index) {
    // The figure stays (and with it a focused or pressed Copy); its code gets the colours.
    const fig = figures[index];
    if (!fig || !blocks[index]) return;
    const holder = document.createElement("template");
    holder.innerHTML = blocks[index]; // server HTML: Pygments output, escaped
    const pre = holder.content.querySelector("pre");
    if (pre) {
      const old = fig.querySelector("pre");
      const focused = old.contains(document.activeElement);
      pre.scrollLeft = old.scrollLeft;
      old.replaceWith(pre);
      pre.scrollLeft = old.scrollLeft;
      if (focused) pre.focus({ preventScroll: true }); // a keyboard reader stays where they were
      fig.classList.remove("streaming");
      window.codeBlocks.decorate(fig);
    }
  }

  function placeSettled(node) {
    if (tail && tail.el.parentNode === answer) answer.insertBefore(node, tail.el);
    else answer.appendChild(node);
  }

  function settleCode(lang, code) {
    const index = figures.length;
    let fig;
    if (tail && tail.kind === "code") {
      fig = tail.el; // the open block's element becomes the closed one: never rebuilt
      tail = null;
    } else {
      fig = codeFigure(lang);
      placeSettled(fig);
    }
    setCode(fig, code);
    figures.push(fig);
    applyServerBlock(index);
  }

  function settleProse(chunk) {
    if (!chunk.trim()) return;
    const frag = document.createDocumentFragment();
    if (markdown) markdownProse(frag, chunk, outline);
    else prose(frag, chunk);
    if (tail && tail.kind === "prose") {
      tail.el.remove();
      tail = null;
    }
    placeSettled(frag);
  }

  function fenceLang(line) {
    return line.slice(3).trim().split(/\s/)[0] || "";
  }

  function render() {
    scheduled = false;
    if (final) return;
    const atBottom = follow;
    for (;;) {
      const rest = text.slice(settledTo);
      if (rest.startsWith("```")) {
        const nl = rest.indexOf("\n");
        if (nl < 0) break;
        const body = rest.slice(nl + 1);
        const close = CLOSING_FENCE.exec(body);
        if (!close) break; // still open: it is the tail
        settleCode(fenceLang(rest.slice(0, nl)), body.slice(0, close.index).replace(/\n$/, ""));
        let end = nl + 1 + close.index + close[0].length;
        if (rest[end] === "\n") end += 1;
        settledTo += end;
        continue;
      }
      const fence = /^```/m.exec(rest);
      const para = rest.indexOf("\n\n");
      let end = -1;
      if (fence && fence.index > 0) end = fence.index;
      if (para >= 0 && (end < 0 || para + 2 < end)) end = para + 2;
      if (end < 0) break; // the paragraph is still growing: it is the tail
      settleProse(rest.slice(0, end));
      settledTo += end;
    }
    renderTail(text.slice(settledTo));
    if (atBottom && controller) keepEndInView();
  }

  // Following the stream keeps the answer's end in view, just above Stop: not the page's
  // bottom, where the history (below the answer on a phone) would take the screen.
  function keepEndInView() {
    const room = stopButton.hidden ? window.innerHeight : stopButton.getBoundingClientRect().top;
    const over = answer.getBoundingClientRect().bottom - (room - 12);
    if (over > 0) window.scrollBy(0, over);
  }
  const endInView = () => answer.getBoundingClientRect().bottom <= window.innerHeight + 80;

  function renderTail(rest) {
    if (rest.startsWith("```")) {
      if (!tail || tail.kind !== "code") {
        if (tail) tail.el.remove();
        const nl = rest.indexOf("\n");
        tail = { kind: "code", el: codeFigure(fenceLang(nl < 0 ? rest : rest.slice(0, nl))) };
        answer.appendChild(tail.el);
      }
      const nl = rest.indexOf("\n");
      // The fence line may have arrived in pieces: its tag names the block once whole.
      const label = tail.el.querySelector("figcaption span");
      const lang = fenceLang(nl < 0 ? rest : rest.slice(0, nl)) || "code";
      if (label.textContent !== lang) label.textContent = lang;
      setCode(tail.el, nl < 0 ? "" : rest.slice(nl + 1));
      return;
    }
    if (!tail || tail.kind !== "prose") {
      if (tail) tail.el.remove();
      tail = { kind: "prose", el: document.createElement(markdown ? "div" : "p"), shown: null };
      tail.el.className = "tail";
      answer.appendChild(tail.el);
    }
    const shown = rest.replace(/^\n+/, "");
    if (tail.shown === shown) return;
    tail.shown = shown;
    if (markdown) {
      // The growing paragraph, as it will settle (its headings after the settled ones).
      const frag = document.createDocumentFragment();
      markdownProse(frag, shown, { ...outline });
      tail.el.replaceChildren(frag);
    } else {
      tail.el.textContent = shown;
    }
  }

  function schedule() {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  }

  function showFinal(html) {
    // The server's formatted answer (Markdown, highlighted code). Its code blocks
    // are swapped for the figures already on the page, so they survive it.
    const focused = document.activeElement;
    const holder = document.createElement("template");
    holder.innerHTML = html; // server-rendered: Markdown with raw HTML off, Pygments code
    holder.content.querySelectorAll("figure.codeblock").forEach((fig, i) => {
      if (!figures[i]) return;
      blocks[i] = fig.outerHTML;
      applyServerBlock(i);
      fig.replaceWith(figures[i]);
    });
    answer.replaceChildren(holder.content);
    answer.querySelectorAll("figure.codeblock").forEach(window.codeBlocks.decorate);
    tail = null;
    final = true;
    // A figure moved out and back loses focus: give it back (a Copy, a code block).
    if (focused && focused !== document.body && document.activeElement !== focused) {
      if (focused.isConnected) focused.focus({ preventScroll: true });
      else answer.focus({ preventScroll: true });
    }
  }

  // --- the prompt's size, shown before it is sent ----------------------------------
  const promptBox = form.elements.namedItem("prompt");
  const sizeNote = document.getElementById("prompt-size");
  const encoder = new TextEncoder();
  const BODY_MARGIN = 1024; // room for the request's other fields
  const kb = (bytes) => `${Math.ceil(bytes / 1024)} KB`;

  const attached = window.attachments;

  function promptSize() {
    const value = promptBox.value;
    // An estimate of the server's count (cl100k), the attached files' with the prompt's
    // (static/attachments.js). The server's count has the last word.
    const tokens = attached.tokensOf(value) + attached.tokens();
    const withFiles = attached.files().length ? " with its files" : "";
    const maxTokens = Number(promptBox.dataset.maxTokens) || Infinity;
    const maxBytes = Number(promptBox.dataset.maxBytes) || Infinity;
    const bytes = encoder.encode(value).length + attached.bytes();
    let over = "";
    if (bytes + BODY_MARGIN > maxBytes) over = `The prompt${withFiles} is ${kb(bytes)}, over this server's limit of ${kb(maxBytes - BODY_MARGIN)}: shorten it.`;
    else if (tokens > maxTokens) over = `About ${tokens} tokens: over the limit of ${maxTokens}. Shorten the prompt${withFiles ? " or remove a file" : ""}.`;
    return { tokens, maxTokens, over, tooBig: bytes + BODY_MARGIN > maxBytes, withFiles };
  }

  let sizeScheduled = false;
  const examples = form.querySelector(".examples");
  function showSize() {
    sizeScheduled = false;
    // The examples are for an empty box: a click on one never replaces what was typed.
    if (examples) examples.hidden = Boolean(promptBox.value.trim());
    if (!sizeNote) return;
    const size = promptSize();
    const typed = promptBox.value.trim() || size.withFiles;
    sizeNote.textContent = size.over || (typed ? `About ${size.tokens} of ${size.maxTokens} tokens${size.withFiles}.` : `Up to ${size.maxTokens} tokens.`);
    sizeNote.classList.toggle("over", Boolean(size.over));
  }
  promptBox.addEventListener("input", () => {
    if (!sizeScheduled) {
      sizeScheduled = true;
      requestAnimationFrame(showSize);
    }
  });
  showSize();

  // --- streaming ----------------------------------------------------------------
  function params() {
    const data = new FormData(form);
    const p = { prompt: String(data.get("prompt") || "") };
    const language = data.get("language");
    if (language) p.language = String(language);
    const model = data.get("model");
    if (model) p.model = String(model);
    const t = data.get("temperature");
    if (t !== null && t !== "") p.temperature = Number(t);
    const mt = data.get("max_tokens");
    if (mt !== null && mt !== "") p.max_tokens = Number(mt);
    const conversation = data.get("conversation_id");
    if (conversation) p.conversation_id = String(conversation);
    const files = attached.files();
    if (files.length) p.files = files;
    return p;
  }

  function setBusy(busy) {
    const hadFocus = document.activeElement;
    stopButton.hidden = !busy;
    generateButton.disabled = busy;
    regenButton.hidden = busy || !text;
    answer.classList.toggle("busy", busy);
    // Never leave focus on a control that just disappeared or went dead.
    if (busy && (hadFocus === generateButton || hadFocus === regenButton)) stopButton.focus();
    if (!busy && hadFocus === stopButton) (regenButton.hidden ? generateButton : regenButton).focus();
  }

  function startAnswer() {
    // The previous answer stays until the new one starts to arrive.
    answer.replaceChildren();
    text = seed;
    settledTo = 0;
    tail = null;
    outline = { source: 0, shown: TOP_HEADING - 1 };
    figures = [];
    blocks = [];
    final = false;
    stats.hidden = true;
    if (changesBox()) changesBox().replaceChildren();
    announce("The answer is arriving.");
  }

  function savedLink(answerId) {
    // Where the answer now lives: its page has versions, Compare, Share and downloads
    // (on that page itself, its actions are brought up to date instead).
    if (!answerId || answerId === pageAnswer) return;
    const saved = document.createElement("a");
    saved.href = `/a/${encodeURIComponent(answerId)}`;
    saved.id = "saved-link";
    saved.textContent = "Open saved answer";
    stats.append(" · ", saved);
  }

  function listInHistory(answerId, p) {
    // The new answer joins the history beside the form at once, as a reload would show it.
    const aside = document.querySelector("aside.history");
    if (!aside || shownQuery()) return; // a filtered list stays as asked
    let list = aside.querySelector("ol.history-list");
    if (!list) {
      list = document.createElement("ol");
      list.className = "history-list";
      aside.querySelectorAll(":scope > p").forEach((empty) => empty.remove());
      aside.append(list);
    }
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `/a/${encodeURIComponent(answerId)}`;
    const prompt = p.prompt.trim();
    link.textContent = prompt.length > 80 ? `${prompt.slice(0, 77)}...` : prompt;
    const when = document.createElement("small");
    const stamp = new Date().toISOString();
    when.textContent = `${stamp.slice(0, 10)} ${stamp.slice(11, 16)} UTC${p.conversation_id ? " · follow-up" : ""}`;
    item.append(link, " ", when);
    list.prepend(item);
  }

  function continueButton(answerId) {
    // The answer just cut at Max tokens goes on where it stopped, as on its own page.
    const button = document.createElement("button");
    button.type = "button";
    button.id = "continue-live";
    button.textContent = "Continue";
    button.addEventListener("click", () => {
      if (controller) return;
      const p = { prompt: "", continue_answer: answerId };
      const limit = params().max_tokens;
      if (limit !== undefined) p.max_tokens = limit;
      generate(p, false);
    });
    stats.append(" · ", button);
  }

  function handle(event, started, fresh) {
    if (event.seq !== undefined) {
      // An event's seq is the answer's length once it is applied: anything at or
      // below what arrived already is a repeat (a re-attachment never sends one).
      if (event.type === "delta" && event.seq <= fresh.seq) return;
      fresh.seq = event.seq;
    }
    if (event.type === "done" || event.type === "error") fresh.ended = true;
    switch (event.type) {
      case "delta":
        if (fresh.first) {
          fresh.first = false;
          startAnswer();
        }
        text += event.text;
        schedule();
        break;
      case "block":
        blocks[event.index] = event.html;
        applyServerBlock(event.index);
        break;
      case "html":
        render(); // settle what is pending, then the server's formatting replaces it
        showFinal(event.html);
        break;
      case "done": {
        const u = event.usage || {};
        const secs = (performance.now() - started) / 1000;
        const tps = u.completion_tokens && secs > 0 ? (u.completion_tokens / secs).toFixed(1) : "?";
        stats.textContent = `First token ${Math.round(event.timing.ttft_ms)} ms · ${u.completion_tokens ?? "?"} tokens · ${tps} tokens/s · ${secs.toFixed(1)} s`;
        const cut = event.finish_reason === "length";
        if (cut && fresh.answerId && !continueForm()) {
          // Never a silent cut, and the rest is one click away.
          stats.textContent += ` · ${stats.dataset.cutContinue}`;
          continueButton(fresh.answerId);
        } else if (cut) {
          stats.textContent += ` · ${stats.dataset.cut}`;
        }
        savedLink(fresh.answerId);
        stats.hidden = false;
        // Its changes to the attached files, as diffs (static/changes.js).
        if (changesBox() && event.files && event.files.length) window.fileChanges.show(changesBox(), event.files, fresh.answerId);
        if (source) source.textContent = text;
        if (continueForm() && event.finish_reason !== "length") continueForm().hidden = true;
        announce("The answer is complete.");
        break;
      }
      case "error":
        showError(friendly(event), fresh.requestId);
        announce("The answer ended with an error.");
        break;
      default:
        break; // pings
    }
  }

  async function readEvents(response, started, fresh) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) if (line) handle(JSON.parse(line), started, fresh);
    }
  }

  // The answer being generated is named in the address, so a reload picks it up.
  function keepInUrl(answerId) {
    const url = new URL(window.location.href);
    if (answerId) url.searchParams.set("answer", answerId);
    else url.searchParams.delete("answer");
    if (url.href !== window.location.href) history.replaceState(null, "", url.href);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const REATTACH_WAITS = [0, 500, 1000, 2000, 4000, 4000];

  // The connection broke (or the page was reloaded): follow the answer again from
  // the last event that arrived. The server kept generating meanwhile.
  async function reattach(fresh, started) {
    for (const wait of REATTACH_WAITS) {
      if (fresh.ended) return;
      stats.textContent = "Reconnecting…";
      stats.hidden = false;
      announce("Reconnecting.");
      await sleep(wait);
      if (controller && controller.signal.aborted) throw new DOMException("stopped", "AbortError");
      let response;
      try {
        response = await fetch(`/ui/answers/${encodeURIComponent(fresh.answerId)}/events?after=${fresh.seq}`, {
          headers: { Accept: "application/x-ndjson" },
          signal: controller ? controller.signal : undefined,
        });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        continue; // still offline: wait longer
      }
      if (response.status === 404) break; // deleted, or not ours: nothing to pick up
      if (!response.ok) continue;
      if (stats.textContent === "Reconnecting…") stats.textContent = "Picking up where it stopped…";
      try {
        await readEvents(response, started, fresh);
      } catch (e) {
        if (e.name === "AbortError") throw e;
      }
    }
    if (!fresh.ended) {
      showError("The connection to the server was lost. What arrived is shown.", fresh.requestId);
      stats.textContent = "Reconnecting failed.";
      savedLink(fresh.answerId); // the server may have finished it meanwhile
      announce("Reconnecting failed.");
    }
  }

  function stopped(fresh) {
    stats.textContent = "Stopped.";
    stats.hidden = false;
    announce("Stopped.");
    fresh.ended = true;
    if (fresh.answerId) {
      savedLink(fresh.answerId); // what arrived is kept there
      // The server keeps a dropped answer going for a while: Stop means stop.
      const token = form.querySelector("input[name=csrf_token]").value;
      fetch(`/answers/${encodeURIComponent(fresh.answerId)}/cancel`, { method: "POST", headers: { "X-CSRFToken": token } }).catch(() => {});
    }
  }

  // The answer this page shows has ended: its Continue, downloads, share and changed files
  // as the server now has them (server HTML, as the page's own).
  async function refreshActions(fresh) {
    const actions = document.querySelector(".answer-actions");
    if (!actions || !fresh.ended || fresh.answerId !== pageAnswer) return;
    try {
      const response = await fetch(window.location.pathname, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const html = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const selector of [".answer-actions", "#changes"]) {
        const current = html.querySelector(selector);
        const shown = document.querySelector(selector);
        if (current && shown) shown.replaceWith(document.adoptNode(current));
      }
    } catch (_) { /* offline: a reload shows them */ }
  }

  // Pick up an answer still being written, from its start: after a reload mid-answer (its
  // id is in the address), or on its own page. Following it keeps it going (RESUME_GRACE
  // counts from its last reader), so no page of the app cuts an answer short.
  async function resume() {
    const answerId = answer.dataset.running ? pageAnswer : new URL(window.location.href).searchParams.get("answer");
    if (!answerId || controller) return;
    controller = new AbortController();
    setBusy(true);
    const fresh = { first: true, requestId: "", answerId, seq: 0, ended: false };
    const started = performance.now();
    try {
      await reattach(fresh, started);
    } catch (e) {
      if (e.name === "AbortError") stopped(fresh);
    } finally {
      keepInUrl("");
      delete answer.dataset.running; // it ended, or this page stopped following it
      controller = null;
      if (!final) render();
      setBusy(false);
      refreshActions(fresh);
    }
  }

  // --- a reload before the answer's id arrived ------------------------------------
  // The request and its settings are kept in this tab until the id is known; a reload
  // before then brings them back, and follows the answer the server began with them.
  const PENDING = "scg-pending-request";
  function remember(p) {
    try {
      sessionStorage.setItem(PENDING, JSON.stringify({ p, page: window.location.pathname, sentAt: Date.now() }));
    } catch (_) { /* storage off: a reload then starts afresh */ }
  }
  function forget() {
    try { sessionStorage.removeItem(PENDING); } catch (_) { /* storage off */ }
  }

  function fillForm(p) {
    const set = (name, value) => {
      const field = form.elements.namedItem(name);
      if (field && value !== undefined && value !== null) field.value = String(value);
    };
    set("prompt", p.prompt);
    set("language", p.language || "");
    set("model", p.model);
    set("temperature", p.temperature);
    set("max_tokens", p.max_tokens);
    attached.restore(p.files);
    promptBox.dispatchEvent(new Event("input"));
  }

  async function startedAnswer(p, within) {
    try {
      const response = await fetch(`/ui/answers/started?within=${Math.ceil(within)}`, { headers: { Accept: "application/json" } });
      if (!response.ok) return "";
      const found = (await response.json()).answers.find((a) => a.prompt === p.prompt);
      return found ? found.id : "";
    } catch (_) {
      return "";
    }
  }

  async function recoverPending() {
    let pending = null;
    try {
      pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
    } catch (_) { /* storage off, or not ours */ }
    forget();
    if (!pending || !pending.p || pending.page !== window.location.pathname) return;
    const age = (Date.now() - pending.sentAt) / 1000;
    if (!(age >= 0 && age < 120) || controller || answer.dataset.running) return;
    if (new URL(window.location.href).searchParams.get("answer")) return;
    fillForm(pending.p);
    for (const wait of [0, 300, 700, 1500]) {
      await sleep(wait);
      const id = await startedAnswer(pending.p, (Date.now() - pending.sentAt) / 1000 + 5);
      if (!id) continue;
      if (pageAnswer) {
        window.location.assign(`/a/${encodeURIComponent(id)}`); // a Refine: its version's page
      } else {
        keepInUrl(id);
        resume();
      }
      return;
    }
    if (notice) {
      notice.hidden = false;
      notice.textContent = "The page was reloaded before the answer began, and it could not be found. Your prompt and settings are back: send it again.";
    }
  }

  async function generate(p, retried) {
    if (!p.continue_answer && !p.prompt.trim()) {
      showError("Please describe the code you want.");
      form.elements.namedItem("prompt").focus();
      return;
    }
    const size = p.continue_answer ? null : promptSize();
    if (size && size.tooBig) {
      // The server would refuse it unread: say so in words, before sending it.
      showError(size.over);
      markInvalid({ field: "prompt" });
      return;
    }
    errorBox.hidden = true;
    clearInvalid();
    controller = new AbortController();
    follow = true;
    setBusy(true);
    stats.textContent = "Waiting for the model…";
    stats.hidden = false;
    announce("Waiting for the model.");
    const started = performance.now();
    const fresh = { first: true, requestId: "", answerId: "", seq: 0, ended: false };
    // A Continue starts from the stored text: on the answer's page, what it was
    // rendered from; on the live page, what just arrived.
    seed = p.continue_answer ? (source ? source.textContent : text) : "";
    const token = form.querySelector("input[name=csrf_token]").value;
    let response = null;
    if (!p.continue_answer) remember(p);
    try {
      response = await fetch("/ui/stream", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token, Accept: "application/x-ndjson, application/json" },
        body: JSON.stringify(p),
        signal: controller.signal,
      });
      fresh.requestId = response.headers.get("X-Request-ID") || "";
      fresh.answerId = response.headers.get("X-Answer-ID") || "";
      forget(); // from here a reload finds the answer by its id (in the address)
      const trimmed = Number(response.headers.get("X-History-Trimmed") || 0);
      if (notice) {
        notice.hidden = !trimmed;
        notice.textContent = trimmed ? `The ${trimmed} oldest turn${trimmed > 1 ? "s" : ""} of this conversation were left out to fit the prompt limit.` : "";
      }
      if (!response.ok) {
        let err = { message: `The server answered ${response.status}.` };
        try {
          err = (await response.json()).error || err;
        } catch (_) { /* not JSON */ }
        if (err.csrf_token) {
          form.querySelector("input[name=csrf_token]").value = err.csrf_token;
          if (!retried) {
            controller = null;
            return generate(p, true);
          }
        }
        if (response.headers.get("Retry-After") && !err.retry_after) err.retry_after = Number(response.headers.get("Retry-After"));
        stats.hidden = true;
        showError(friendly(err), err.request_id || fresh.requestId);
        markInvalid(err);
        return;
      }
      if (pageAnswer && fresh.answerId && fresh.answerId !== pageAnswer) {
        // A new version (Refine): its own page shows it, as it streams, with its number,
        // versions, downloads, share and delete. Read on here until that page is up.
        window.location.assign(`/a/${encodeURIComponent(fresh.answerId)}`);
      } else if (fresh.answerId && !pageAnswer) {
        keepInUrl(fresh.answerId);
      }
      if (fresh.answerId && !p.continue_answer) listInHistory(fresh.answerId, p);
      await readEvents(response, started, fresh);
      if (!fresh.ended && fresh.answerId) await reattach(fresh, started);
    } catch (e) {
      if (e.name === "AbortError") {
        stopped(fresh);
      } else if (fresh.answerId && !fresh.ended) {
        try {
          await reattach(fresh, started);
        } catch (again) {
          if (again.name === "AbortError") stopped(fresh);
          else showError("The connection to the server was lost. What arrived is shown.", fresh.requestId);
        }
      } else if (!response) {
        // The request never reached the server: nothing was sent, and the prompt is still here.
        showError(navigator.onLine
          ? "The server could not be reached, so nothing was sent. Your prompt is still here: try again in a moment."
          : "You are offline, so nothing was sent. Your prompt is still here: send it again once you are back online.");
      } else {
        showError("The connection to the server was lost. What arrived is shown.", fresh.requestId);
      }
    } finally {
      forget();
      if (fresh.ended || !fresh.answerId) keepInUrl("");
      controller = null;
      if (!final) render();
      // No status outlives what it described.
      if (stats.textContent === "Waiting for the model…") stats.hidden = true;
      if (/^(Waiting for the model|The answer is arriving|Reconnecting)\.$/.test(status.textContent)) {
        announce(errorBox.hidden ? "The answer ended." : ""); // the error speaks for itself (role=alert)
      }
      setBusy(false);
      refreshActions(fresh);
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    // The history's filter is part of this form (a page without the script sends the
    // prompt along with it); Enter in a field filters when the filter was changed.
    const role = e.submitter ? e.submitter.dataset.history : "";
    const query = filterQuery();
    if (role === "clear") return filterHistory("");
    if (role === "filter" || (role === "enter" && query !== shownQuery())) return filterHistory(query);
    if (!controller) generate(params(), false);
  });
  // Enter sends and Shift+Enter starts a new line, as in chat boxes; Ctrl+Enter sends from
  // any field. On a touch screen the keyboard's Enter stays a new line (its send is the
  // button). Never while an input method composes a word.
  const touch = window.matchMedia("(pointer: coarse)");
  form.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.isComposing) return;
    const send = e.ctrlKey || e.metaKey || (e.target.id === "prompt" && !e.shiftKey && !e.altKey && !touch.matches);
    if (send) {
      e.preventDefault();
      if (!controller) generate(params(), false);
    }
  });
  // An example prompt fills the form (without the script, its link loads it filled).
  form.addEventListener("click", (e) => {
    const example = e.target.closest("a.example");
    if (!example) return;
    e.preventDefault();
    const prompt = form.elements.namedItem("prompt");
    prompt.value = example.textContent.trim();
    prompt.dispatchEvent(new Event("input"));
    prompt.focus();
  });
  stopButton.addEventListener("click", () => controller && controller.abort());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && controller) {
      e.preventDefault();
      controller.abort();
    }
  });
  document.addEventListener("submit", (e) => {
    if (e.target.id !== "continue-form") return;
    e.preventDefault();
    const data = new FormData(e.target);
    if (!controller) generate({ prompt: "", continue_answer: String(data.get("continue_answer")), max_tokens: Number(data.get("max_tokens")) }, false);
  });
  // --- Delete asks first: a dialog here; without the script, a page of its own --------
  document.addEventListener("submit", (e) => {
    const ask = e.target.dataset.confirm;
    if (!ask) return;
    e.preventDefault();
    if (!window.confirm(ask)) return;
    // What that page's button does: a POST with the token, answered by where to go next.
    const post = document.createElement("form");
    post.method = "post";
    post.action = e.target.action;
    post.hidden = true;
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrf_token";
    token.value = form.querySelector("input[name=csrf_token]").value;
    post.append(token);
    document.body.append(post);
    post.submit();
  });

  // --- the history beside the form: filtered, cleared and paged in place ------------
  // Never by leaving the page: the prompt being typed and the answer being written stay.
  async function showHistory(url) {
    const aside = document.querySelector("aside.history");
    let current = null;
    try {
      const response = await fetch(url, { headers: { Accept: "text/html" } });
      if (response.ok) {
        const html = new DOMParser().parseFromString(await response.text(), "text/html");
        current = html.querySelector("aside.history"); // server HTML, as the page's own
      }
    } catch (_) { /* offline: said below */ }
    if (!aside || !current) {
      showError("The history could not be loaded. Your prompt is still here: try again in a moment.");
      return;
    }
    const focused = document.activeElement && aside.contains(document.activeElement) ? document.activeElement.id : "";
    aside.replaceWith(document.adoptNode(current));
    const again = focused && document.getElementById(focused);
    (again || current.querySelector("#history-q")).focus({ preventScroll: true });
    // The address says what is listed (a reload lists the same); an answer in it stays.
    const shown = new URL(url, window.location.href);
    const address = new URL(window.location.href);
    for (const name of ["q", "before"]) {
      const value = shown.searchParams.get(name);
      if (value) address.searchParams.set(name, value);
      else address.searchParams.delete(name);
    }
    if (address.href !== window.location.href) history.replaceState(null, "", address.href);
  }
  const filterQuery = () => String((document.getElementById("history-q") || {}).value || "").trim();
  const shownQuery = () => String((form.elements.namedItem("shown_q") || {}).value || "").trim();
  function filterHistory(query) {
    const aside = document.querySelector("aside.history");
    if (!aside) return;
    const url = new URL(aside.dataset.here || "/", window.location.href);
    if (query) url.searchParams.set("q", query);
    showHistory(url.href);
  }
  // Enter in the filter always filters (it is outside the form's own fields).
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.isComposing || e.target.id !== "history-q") return;
    e.preventDefault();
    filterHistory(filterQuery());
  });
  document.addEventListener("click", (e) => {
    const link = e.target.closest("aside.history .older a");
    if (!link || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    showHistory(link.href);
  });
  // Regenerate asks again with what the form says now (edited or not).
  regenButton.addEventListener("click", () => !controller && generate(params(), false));
  // Follow the stream unless the reader scrolled up to read (its end out of view).
  window.addEventListener("scroll", () => { follow = endInView(); }, { passive: true });
  resume();
  recoverPending();
  // Copy brings in what has arrived first (static/codeblocks.js has Copy and Run).
  window.codeBlocks.beforeCopy = () => { if (controller && !final) render(); };
})();
