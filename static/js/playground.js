// The playground page: speaks the socket protocol of docs/playground.md over /ws/playground/.
// Everything a model or a user writes is text until it passes through marked (Markdown, with raw
// HTML escaped) and DOMPurify (a second line: no script, no event handlers, no javascript: links).
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("playground-data").textContent);
  const $ = (id) => document.getElementById(id);
  const transcript = $("transcript");
  const composer = $("composer");
  const prompt = $("prompt");
  const sendButton = $("send");
  const stopButton = $("stop-answer");
  const connection = $("connection");
  const readOnly = !composer;

  let conversation = data.conversation; // the stored conversation (null for a new chat)
  let conversationId = conversation ? conversation.id : null;
  let socket = null;
  let everOpened = false;
  let retries = 0;
  let seq = 0;
  let textChosen = false; // the user picked text completion for a model that also chats
  const live = new Map(); // request tag -> answer view still streaming
  const pending = new Set(); // request tags sent, not yet `started`

  // --- Markdown ---------------------------------------------------------------------------------
  const escapeHtml = (text) =>
    text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  // Raw HTML in Markdown is shown as the text it is, never as markup.
  marked.use({ gfm: true, breaks: true, renderer: { html: (token) => escapeHtml(token.text) } });
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });

  function renderMarkdown(element, text, final) {
    element.innerHTML = DOMPurify.sanitize(marked.parse(text), { USE_PROFILES: { html: true } });
    if (final) element.querySelectorAll("pre code").forEach((block) => hljs.highlightElement(block));
  }

  // --- the transcript ---------------------------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function addExchange(turnId, content) {
    const welcome = $("welcome");
    if (welcome) welcome.remove();
    const exchange = el("div", "pg-exchange");
    const user = el("div", "pg-msg pg-user");
    user.dataset.role = "user";
    if (turnId) user.dataset.turn = turnId;
    const body = el("div", "pg-text", content);
    user.appendChild(body);
    if (!readOnly) {
      const edit = el("button", "linklike pg-edit", "Edit");
      edit.type = "button";
      edit.title = "Edit this message and resend it (later messages are removed)";
      edit.addEventListener("click", () => startEdit(exchange));
      user.appendChild(edit);
    }
    exchange.appendChild(user);
    exchange.appendChild(el("div", "pg-answers"));
    transcript.appendChild(exchange);
    return exchange;
  }

  function addAnswer(exchange, model) {
    const answers = exchange.querySelector(".pg-answers");
    const view = el("article", "pg-msg pg-assistant");
    view.dataset.role = "assistant";
    view.dataset.model = model;
    view.appendChild(el("div", "pg-model", model));
    const body = el("div", "pg-text pg-markdown");
    view.appendChild(body);
    view.appendChild(el("div", "pg-footer muted"));
    answers.appendChild(view);
    answers.classList.toggle("compare", answers.children.length > 1);
    return { view, body, text: "", scheduled: false, exchange, model };
  }

  function footer(answer, parts, status) {
    const node = answer.view.querySelector(".pg-footer");
    node.textContent = parts.filter(Boolean).join(" · ");
    answer.view.dataset.status = status;
  }

  function usageWords(usage) {
    if (!usage) return "";
    return `${usage.total_tokens} tokens (${usage.prompt_tokens} in, ${usage.completion_tokens} out)`;
  }

  function showError(answer, event) {
    const box = el("div", "pg-error");
    box.setAttribute("role", "alert");
    box.dataset.code = event.code;
    box.appendChild(el("strong", "", event.message));
    if (event.hint) box.appendChild(el("p", "", event.hint));
    if (event.retry_after) box.appendChild(el("p", "muted", `You can try again in ${event.retry_after} s.`));
    answer.view.appendChild(box);
    footer(answer, [answer.model, "failed"], "error");
  }

  function storedTurns(turns) {
    let exchange = null;
    for (const turn of turns) {
      if (turn.role === "user") {
        exchange = addExchange(turn.id, turn.content);
        continue;
      }
      if (!exchange) exchange = addExchange(null, "");
      const answer = addAnswer(exchange, turn.model);
      answer.view.dataset.turn = turn.id;
      renderMarkdown(answer.body, turn.content, true);
      if (turn.status === "error") {
        showError(answer, { code: turn.error_code, message: `This answer failed (${turn.error_code}).` });
      } else {
        finished(answer, turn, turn.status);
      }
    }
  }

  function finished(answer, event, status) {
    const parts = [answer.model];
    if (status === "stopped") parts.push("stopped");
    parts.push(usageWords(event.usage));
    if (event.ttft_ms != null) parts.push(`first token ${Math.round(event.ttft_ms)} ms`);
    if (event.tokens_per_second != null) parts.push(`${event.tokens_per_second} tokens/s`);
    footer(answer, parts, status);
  }

  function scheduleRender(answer) {
    if (answer.scheduled) return;
    answer.scheduled = true;
    requestAnimationFrame(() => {
      answer.scheduled = false;
      if (answer.final) return; // the answer ended before this frame: its final rendering stands
      renderMarkdown(answer.body, answer.text, false);
      keepScrolled();
    });
  }

  function keepScrolled() {
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 160;
    if (nearBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  function lastExchange() {
    const all = transcript.querySelectorAll(".pg-exchange");
    return all.length ? all[all.length - 1] : null;
  }

  // --- events from the server -------------------------------------------------------------------
  function onEvent(event) {
    switch (event.type) {
      case "started": return onStarted(event);
      case "delta": {
        const answer = live.get(event.request);
        if (!answer) return;
        answer.text += event.text;
        scheduleRender(answer);
        return;
      }
      case "done":
      case "stopped": {
        const answer = live.get(event.request);
        if (!answer) return;
        live.delete(event.request);
        if (event.turn) answer.view.dataset.turn = event.turn;
        answer.final = true;
        renderMarkdown(answer.body, answer.text, true);
        finished(answer, event, event.type === "done" ? "ok" : "stopped");
        return idle();
      }
      case "error": return onError(event);
      case "subscribed":
        return notice(`Watching live: answers appear as ${conversation ? conversation.owner : "its owner"} sends messages.`, "ok", 4000);
      case "unsubscribed":
        return notice("You can no longer watch this conversation: it is not shared with you any more.", "bad");
    }
  }

  function onStarted(event) {
    pending.delete(event.request);
    if (!conversationId) adopt(event.conversation);
    let answer = live.get(event.request);
    if (!answer) {
      // Another socket's answer: a shared conversation watched live.
      let exchange = transcript.querySelector(`.pg-user[data-turn="${event.turn}"]`);
      exchange = exchange ? exchange.closest(".pg-exchange") : null;
      if (exchange) {
        truncateAfter(exchange);
        exchange.querySelector(".pg-user .pg-text").textContent = event.content;
        exchange.querySelectorAll(`.pg-assistant[data-model="${CSS.escape(event.model)}"]`).forEach((n) => n.remove());
      } else {
        exchange = addExchange(event.turn, event.content);
      }
      answer = addAnswer(exchange, event.model);
      live.set(event.request, answer);
    }
    const user = answer.exchange.querySelector(".pg-user");
    user.dataset.turn = event.turn;
    answer.view.dataset.request = event.request;
    footer(answer, [answer.model, "writing…"], "streaming");
    busy();
  }

  function onError(event) {
    const tags = event.request && (live.has(event.request) || pending.has(event.request))
      ? [event.request]
      : [...pending]; // refused before any answer started: every answer of that message
    if (!tags.length) return notice(`${event.message} ${event.hint || ""}`, "bad");
    for (const tag of tags) {
      const answer = live.get(tag);
      pending.delete(tag);
      live.delete(tag);
      if (answer) showError(answer, event);
    }
    idle();
  }

  // --- sending ----------------------------------------------------------------------------------
  function selectedModels() {
    const first = $("model").value;
    const models = [first];
    if ($("compare").checked) {
      document.querySelectorAll("input[name=compare_model]:checked").forEach((box) => {
        if (box.value !== first && models.length < 4) models.push(box.value);
      });
    }
    return models;
  }

  function readParams() {
    const params = {};
    const number = (id, integer) => {
      const raw = $(id).value.trim();
      if (raw === "") return;
      params[id] = integer ? parseInt(raw, 10) : parseFloat(raw);
    };
    number("temperature");
    number("top_p");
    number("max_tokens", true);
    const stops = $("stop").value.split("\n").filter((s) => s !== "");
    if (stops.length) params.stop = stops;
    return params;
  }

  function currentMode() {
    const checked = document.querySelector("input[name=mode]:checked");
    return checked ? checked.value : "chat";
  }

  function send(content, options) {
    options = options || {};
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      notice("Not connected yet: your message was not sent. It will work once the page reconnects.", "bad");
      return false;
    }
    // The settings' own limits (temperature 0 to 2, max tokens within the context) before sending.
    if (![...document.querySelectorAll(".pg-params input")].every((input) => input.reportValidity())) return false;
    const models = options.models || selectedModels();
    const streams = models.map((model) => ({ request: `r${Date.now().toString(36)}-${++seq}`, model }));
    const message = { type: "start", streams, params: readParams() };
    if (content !== null) message.content = content;
    if (conversationId) {
      message.conversation = conversationId;
    } else {
      Object.assign(message, { project: data.project, mode: currentMode(), system: $("system").value });
    }
    if (options.edit) message.edit = options.edit;
    let exchange = options.exchange;
    if (!exchange) exchange = addExchange(null, content);
    for (const stream of streams) {
      const answer = addAnswer(exchange, stream.model);
      footer(answer, [stream.model, "waiting…"], "waiting");
      live.set(stream.request, answer);
      pending.add(stream.request);
    }
    socket.send(JSON.stringify(message));
    busy();
    keepScrolled();
    return true;
  }

  function regenerate() {
    const exchange = lastExchange();
    if (!exchange || live.size) return;
    const models = [...new Set([...exchange.querySelectorAll(".pg-assistant")].map((n) => n.dataset.model))];
    exchange.querySelectorAll(".pg-assistant").forEach((n) => n.remove());
    send(null, { exchange, models: models.length ? models : undefined });
  }

  function truncateAfter(exchange) {
    while (exchange.nextElementSibling) exchange.nextElementSibling.remove();
  }

  function startEdit(exchange) {
    if (live.size) return;
    const user = exchange.querySelector(".pg-user");
    const text = user.querySelector(".pg-text");
    if (user.querySelector("form")) return;
    const form = el("form", "pg-edit-form");
    const area = el("textarea");
    area.value = text.textContent;
    area.rows = Math.min(10, Math.max(2, area.value.split("\n").length));
    area.setAttribute("aria-label", "Edit message");
    const save = el("button", "", "Save and resend");
    save.type = "submit";
    const cancel = el("button", "secondary", "Cancel");
    cancel.type = "button";
    form.append(area, save, cancel);
    text.hidden = true;
    user.appendChild(form);
    area.focus();
    cancel.addEventListener("click", () => { form.remove(); text.hidden = false; });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const content = area.value;
      if (!content.trim()) return;
      const models = [...new Set([...exchange.querySelectorAll(".pg-assistant")].map((n) => n.dataset.model))];
      truncateAfter(exchange);
      exchange.querySelectorAll(".pg-assistant").forEach((n) => n.remove());
      text.textContent = content;
      text.hidden = false;
      form.remove();
      send(content, { exchange, edit: parseInt(user.dataset.turn, 10), models: models.length ? models : undefined });
    });
  }

  function stop() {
    if (socket && socket.readyState === WebSocket.OPEN && live.size) socket.send(JSON.stringify({ type: "stop" }));
  }

  function busy() {
    if (readOnly) return;
    stopButton.hidden = live.size === 0;
    const open = socket !== null && socket.readyState === WebSocket.OPEN;
    sendButton.disabled = live.size > 0 || !open || !$("model").options.length;
    updateRegenerate();
  }

  function idle() {
    busy();
  }

  function updateRegenerate() {
    document.querySelectorAll(".pg-regenerate").forEach((b) => b.remove());
    const exchange = lastExchange();
    if (readOnly || !exchange || live.size || !exchange.querySelector(".pg-user").dataset.turn) return;
    const button = el("button", "secondary pg-regenerate", "Regenerate");
    button.type = "button";
    button.title = "Answer the last message again";
    button.addEventListener("click", regenerate);
    exchange.appendChild(button);
  }

  // Once the first message is stored the conversation has an id: the address, the sidebar and the
  // header's actions follow it, so a reload or a shared link opens the same conversation.
  function adopt(id) {
    conversationId = id;
    conversation = { id, owner: data.user, title: prompt ? prompt.dataset.sent || "" : "" };
    history.replaceState(null, "", `${data.page}c/${id}/`);
    document.querySelectorAll("[data-action]").forEach((form) => { form.action = form.dataset.action.replace("__ID__", id); });
    document.querySelectorAll("[data-href]").forEach((link) => { link.href = link.dataset.href.replace("__ID__", id); });
    const actions = $("conversation-actions");
    if (actions) actions.hidden = false;
    const title = (prompt.dataset.sent || "").slice(0, 80) || "Untitled";
    $("conversation-title").textContent = title;
    const renameInput = $("rename-title");
    if (renameInput) renameInput.value = title;
    const list = $("history");
    list.querySelectorAll(".pg-empty-history").forEach((n) => n.remove());
    const item = el("li", "current");
    item.dataset.conversation = id;
    const link = el("a", "", title);
    link.href = `${data.page}c/${id}/`;
    link.setAttribute("aria-current", "page");
    item.append(link, el("span", "pg-meta", ""));
    list.prepend(item);
    // A persona and a mode belong to the conversation from now on.
    document.querySelectorAll("input[name=mode]").forEach((r) => { r.disabled = true; });
    const persona = $("persona");
    if (persona) persona.disabled = true;
    $("system").readOnly = true;
  }

  // --- the socket -------------------------------------------------------------------------------
  function notice(text, kind, clearAfter) {
    connection.hidden = false;
    connection.className = `pg-connection ${kind || ""}`;
    connection.textContent = text;
    if (clearAfter) setTimeout(() => { if (connection.textContent === text) connection.hidden = true; }, clearAfter);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + data.socket);
    // A handshake that hangs (a proxy, a server under load) is abandoned and tried again.
    const attempt = socket;
    const guard = setTimeout(() => {
      if (attempt.readyState === attempt.CONNECTING) attempt.close();
    }, 5000);
    socket.addEventListener("open", () => {
      clearTimeout(guard);
      // After a lost connection, or after a first attempt that never opened (its "Connection lost"
      // notice would otherwise stay up over a working socket).
      if (everOpened || retries > 0) notice(everOpened ? "Reconnected." : "Connected.", "ok", 3000);
      everOpened = true;
      retries = 0;
      busy();
      if (conversationId && (readOnly || (conversation && conversation.shared))) {
        socket.send(JSON.stringify({ type: "subscribe", conversation: conversationId }));
      }
    });
    socket.addEventListener("message", (message) => onEvent(JSON.parse(message.data)));
    socket.addEventListener("close", (event) => {
      clearTimeout(guard);
      // The server stops and stores every answer of a closed socket: say so on each.
      for (const [tag, answer] of live) {
        footer(answer, [answer.model, "interrupted: the connection dropped (the partial answer is saved)"], "stopped");
        answer.final = true;
        renderMarkdown(answer.body, answer.text, true);
        live.delete(tag);
      }
      pending.clear();
      busy();
      if (event.code === 4401) {
        notice("Your session has ended. Sign in again to keep chatting.", "bad");
        const link = el("a", "", "Sign in");
        link.href = `/accounts/login/?next=${encodeURIComponent(location.pathname)}`;
        connection.append(" ", link);
        return;
      }
      const delay = Math.min(10000, 500 * 2 ** retries++);
      notice(`Connection lost. Reconnecting in ${Math.ceil(delay / 1000)} s…`, "bad");
      setTimeout(connect, delay);
    });
  }

  // --- the settings -----------------------------------------------------------------------------
  function modelOption() {
    const select = $("model");
    return select ? select.options[select.selectedIndex] : null;
  }

  function syncSettings() {
    const option = modelOption();
    if (!option) return;
    const chat = option.dataset.chat === "1";
    const text = option.dataset.text === "1";
    const modeChat = $("mode-chat");
    const modeText = $("mode-text");
    if (!conversationId) {
      modeChat.disabled = !chat;
      modeText.disabled = !text;
      // Chat unless the model cannot, or the user chose text completion themselves.
      if (!chat) modeText.checked = true;
      else if (!text || !textChosen) modeChat.checked = true;
    }
    const mode = currentMode();
    const compare = $("compare").checked;
    $("compare-models").hidden = !compare;
    let context = parseInt(option.dataset.context, 10);
    document.querySelectorAll("input[name=compare_model]").forEach((box) => {
      const fits = (mode === "chat" ? box.dataset.chat : box.dataset.text) === "1";
      box.disabled = !fits || box.value === option.value;
      if (box.disabled) box.checked = false;
      if (compare && box.checked) context = Math.min(context, parseInt(box.dataset.context, 10));
    });
    const chosen = document.querySelectorAll("input[name=compare_model]:checked").length;
    document.querySelectorAll("input[name=compare_model]:not(:checked)").forEach((box) => {
      if (chosen >= 3) box.disabled = true;
    });
    $("max_tokens").max = context;
    $("max-tokens-help").textContent = `Default ${data.defaults.max_tokens}; at most ${context} (the model's context).`;
    $("model-help").textContent = chat ? "" : "A base model: text completion only.";
    if (!$("system").readOnly) $("system").disabled = mode === "text";
  }

  function setUp() {
    if (window.matchMedia("(max-width: 1100px)").matches) {
      // On a phone the conversation comes first; history and settings open on a tap.
      document.querySelectorAll(".pg-drawer").forEach((drawer) => { drawer.open = false; });
    }
    if (conversation) storedTurns(conversation.turns);
    updateRegenerate();
    if (readOnly) return connect();
    const persona = $("persona");
    if (persona) {
      persona.addEventListener("change", () => {
        $("system").value = persona.options[persona.selectedIndex].dataset.text;
      });
    }
    ["model", "compare", "mode-chat", "mode-text"].forEach((id) => $(id).addEventListener("change", syncSettings));
    $("mode-chat").addEventListener("change", () => { textChosen = false; });
    $("mode-text").addEventListener("change", () => { textChosen = true; });
    if (!conversation) {
      // A new chat starts on a chat model where there is one (base models come first by provider order).
      const chatModel = $("model").querySelector("option[data-chat='1']");
      if (chatModel) $("model").value = chatModel.value;
    }
    document.querySelectorAll("input[name=compare_model]").forEach((box) => box.addEventListener("change", syncSettings));
    syncSettings();
    composer.addEventListener("submit", (event) => {
      event.preventDefault();
      const content = prompt.value;
      if (!content.trim() || live.size) return;
      prompt.dataset.sent = content;
      if (send(content)) prompt.value = "";
    });
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") stop();
    });
    stopButton.addEventListener("click", stop);
    document.querySelectorAll(".pg-delete").forEach((form) => form.addEventListener("submit", (event) => {
      if (!confirm("Delete this conversation? This cannot be undone.")) event.preventDefault();
    }));
    connect();
    busy();
  }

  setUp();
})();
