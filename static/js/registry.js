// Registry pages. Every form here works without JavaScript; this only makes it smoother.

function csrfToken(form) {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  // CSRF_USE_SESSIONS keeps the token out of cookies; the form still carries it.
  const input = form.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

function showStatus(text) {
  const status = document.getElementById("toggle-status");
  if (status) status.textContent = text;
}

// Show a model's state in its row (or detail panel) after a switch, without a reload.
function applyEnabled(form, enabled) {
  const container = form.closest("[data-model-id]") || form.parentElement;
  const label = container.querySelector("[data-state]");
  if (label) {
    label.textContent = enabled ? "enabled" : "disabled";
    label.classList.toggle("ok", enabled);
  }
  if (container.tagName === "TR") container.classList.toggle("is-disabled", !enabled);
  form.querySelector("input[name=enabled]").value = enabled ? "0" : "1";
  const button = form.querySelector("[role=switch]");
  button.setAttribute("aria-checked", enabled ? "true" : "false");
  button.setAttribute("aria-label", `${enabled ? "Disable" : "Enable"} ${button.dataset.name}`);
  showStatus(`${button.dataset.name} ${enabled ? "enabled" : "disabled"}.`);
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (form.matches("form[data-confirm]") && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  if (!form.matches("form[data-toggle]")) return;
  event.preventDefault();
  const button = form.querySelector("[role=switch]");
  button.disabled = true;
  try {
    const response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(form), Accept: "application/json" },
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.detail || `the server answered ${response.status}`);
    applyEnabled(form, Boolean(data.enabled));
  } catch (err) {
    showStatus(`Could not switch ${button.dataset.name}: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

// Provider form: show the Pangu settings only for kind "pangu". Without JS they stay visible.
function syncKindFieldsets() {
  const kind = document.getElementById("id_kind");
  if (!kind) return;
  for (const fieldset of document.querySelectorAll("fieldset[data-kind]")) {
    fieldset.hidden = fieldset.dataset.kind !== kind.value;
  }
}
document.addEventListener("change", (event) => {
  if (event.target.id === "id_kind") syncKindFieldsets();
});
syncKindFieldsets();
