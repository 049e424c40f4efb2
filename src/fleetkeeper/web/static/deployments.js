// Deployments: the create form (live "N devices match", update or command fields) and a
// deployment's page kept up to date from server-sent events (GET /ui/events/deployments/{id}).
// Progressive like fk.js: without it the form still posts and the page shows the counts of
// the moment it was loaded. Everything from the server lands in the page as text, never HTML.
"use strict";

(() => {
  const words = (text) => (text || "").split(" ").filter(Boolean);
  const sum = (counts, states) => states.reduce((total, s) => total + (counts[s] || 0), 0);
  const when = (iso) => (iso ? `${new Date(iso).toISOString().slice(0, 19).replace("T", " ")} UTC` : "—");
  const percent = (part, whole) => `${whole ? Math.round((1000 * part) / whole) / 10 : 0}%`;

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // --- the create form ------------------------------------------------------------------------

  function targetCount(input) {
    const output = document.getElementById(input.dataset.countOutput);
    if (!output) return;
    let timer = null;
    let asked = 0;
    const ask = async () => {
      const query = input.value.trim();
      const mine = ++asked;
      if (!query) { output.textContent = ""; return; }
      try {
        const response = await fetch(`${input.dataset.countUrl}?target=${encodeURIComponent(query)}`, {
          credentials: "same-origin", headers: { Accept: "application/json" },
        });
        const data = await response.json();
        if (mine !== asked) return;  // an answer to an older query
        output.textContent = data.error
          ? data.error
          : `${data.count} device${data.count === 1 ? "" : "s"} match.`;
        output.classList.toggle("bad-text", Boolean(data.error));
      } catch (error) {
        if (mine === asked) output.textContent = "The count is not available.";
      }
    };
    input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(ask, 300); });
    ask();
  }

  function kindSwitch(form) {
    const radios = form.querySelectorAll('input[name="kind"]');
    if (!radios.length) return;
    const show = () => {
      const chosen = form.querySelector('input[name="kind"]:checked');
      form.querySelectorAll("[data-kind]").forEach((part) => {
        part.hidden = Boolean(chosen) && part.dataset.kind !== chosen.value;
      });
    };
    radios.forEach((radio) => radio.addEventListener("change", show));
    show();
  }

  // --- a deployment's page --------------------------------------------------------------------

  function showReasons(list, counts) {
    const entries = Object.entries(counts || {}).sort(([a], [b]) => a.localeCompare(b));
    list.replaceChildren(...(entries.length
      ? entries.map(([reason, n]) => {
        const item = element("li");
        item.append(element("span", reason), " ", element("span", n, "num"));
        return item;
      })
      : [element("li", list.dataset.empty || "None.", "muted")]));
  }

  function showPhases(body, doc, bad, busy, over) {
    body.replaceChildren(...doc.phases.map((phase) => {
      // The phase a deployment ended in reads as the deployment's end, not as running.
      const phaseState = over && phase.state === "running" ? doc.state : phase.state;
      const counts = phase.counts || {};
      const ok = counts.succeeded || 0;
      const row = element("tr");
      const head = element("th", phase.index + 1);
      head.scope = "row";
      const reach = phase.percent !== null ? `${phase.percent} %` : `${phase.count} devices`;
      const done = element("td");
      const track = element("span", null, "progress");
      track.setAttribute("aria-hidden", "true");
      const bar = element("span", null, "bar st-succeeded");
      bar.style.width = percent(ok, phase.size);
      track.append(bar);
      done.append(track, ` ${ok}`);
      const state = element("td");
      state.append(element("span", phaseState, `pill ${phaseState}`));
      row.append(
        head, element("td", reach), element("td", phase.size, "num"), done,
        element("td", sum(counts, bad), "num"), element("td", sum(counts, busy), "num"),
        element("td", counts.queued || 0, "num"), state,
      );
      return row;
    }));
  }

  function showTimeline(list, events) {
    list.replaceChildren(...(events || []).map((event) => {
      const item = element("li");
      const time = element("time", when(event.at));
      time.dateTime = event.at;
      item.append(time, " ", element("strong", event.kind), " ", element("span", event.actor, "muted"));
      const detail = Object.entries(event.detail || {}).sort(([a], [b]) => a.localeCompare(b))
        .map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`);
      if (detail.length) item.append(" ", element("small", detail.join(", "), "detail"));
      return item;
    }));
  }

  function showActions(doc) {
    const retryable = (doc.counts.failed || 0) + (doc.counts.timed_out || 0);
    document.querySelectorAll("#actions [data-states]").forEach((part) => {
      let offered = words(part.dataset.states).includes(doc.state);
      if (part.dataset.action === "retry-failed") offered = offered && retryable > 0;
      part.hidden = !offered;
    });
  }

  function update(root, doc) {
    const bad = words(root.dataset.unsuccessful);
    const busy = words(root.dataset.active);
    const all = Object.values(doc.counts).reduce((a, b) => a + b, 0);
    const fields = {
      state: doc.state,
      reason: doc.reason || "",
      total: doc.total,
      failed: sum(doc.counts, bad),
      busy: sum(doc.counts, busy),
      eta: when(doc.eta),
      rate_per_minute: Math.round(doc.rate_per_minute * 10) / 10,
      finished_at: when(doc.finished_at),
    };
    Object.entries(fields).forEach(([name, value]) => {
      root.querySelectorAll(`[data-field="${name}"]`).forEach((node) => { node.textContent = String(value); });
    });
    root.querySelectorAll('[data-field="state"]').forEach((node) => { node.className = `pill ${doc.state}`; });
    root.querySelectorAll('[data-field="reason"]').forEach((node) => { node.hidden = !doc.reason; });
    root.querySelectorAll('[data-tile="failed"]').forEach((node) => node.classList.toggle("bad", fields.failed > 0));
    Object.entries(doc.counts).forEach(([state, n]) => {
      root.querySelectorAll(`[data-count="${state}"]`).forEach((node) => { node.textContent = String(n); });
      root.querySelectorAll(`[data-bar="${state}"]`).forEach((node) => { node.style.width = percent(n, all); });
      root.querySelectorAll(`[data-state-row="${state}"]`).forEach((node) => { node.hidden = !n; });
    });
    const over = words(root.dataset.final).includes(doc.state);
    root.querySelectorAll("[data-phases]").forEach((body) => showPhases(body, doc, bad, busy, over));
    root.querySelectorAll("[data-reasons]").forEach((list) => showReasons(list, doc[list.dataset.reasons]));
    root.querySelectorAll("[data-timeline]").forEach((list) => showTimeline(list, doc.timeline));
    showActions(doc);
    const actions = document.getElementById("actions");
    if (actions && over) actions.hidden = true;
    return over;
  }

  function follow(root) {
    let source = null;
    source = FK.live(root.dataset.live, (doc) => {
      // A finished deployment's stream ends; without close() the browser would reconnect.
      if (update(root, doc) && source) source.close();
    });
  }

  // Action buttons ask first; each says what it is about to do (event.submitter).
  function confirmActions(form) {
    form.addEventListener("submit", (event) => {
      const button = event.submitter;
      if (!button || !button.dataset.confirm) return;
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("input[data-count-url]").forEach(targetCount);
    document.querySelectorAll("#deploy-form").forEach(kindSwitch);
    document.querySelectorAll("form.deploy-actions").forEach(confirmActions);
    document.querySelectorAll("#deployment[data-live]").forEach(follow);
  });
})();
