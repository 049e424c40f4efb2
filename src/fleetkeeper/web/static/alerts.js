// Alerts, live: the counters follow the server's events (/ui/events/alerts) and the first page
// of the list refreshes itself, unless the operator is in the middle of something there (a box
// ticked, an action open, focus in the list): then a notice offers the refresh instead.
// Also the overview's #firing-count, when this script is on that page.
"use strict";

(() => {
  const live = document.getElementById("alert-live");
  const list = document.getElementById("alert-list");
  const stale = document.getElementById("alert-list-stale");
  const firing = document.getElementById("firing-count");
  let version = live ? live.dataset.version : null;

  function busy() {
    if (!list) return false;
    if (list.querySelector("details[open]")) return true;
    if (document.querySelector('input[name="ids"]:checked')) return true;
    return list.contains(document.activeElement) && document.activeElement !== list;
  }

  async function refresh() {
    if (!list || !list.dataset.fragment) return;
    const response = await fetch(list.dataset.fragment, { credentials: "same-origin" });
    if (!response.ok || response.redirected) return; // logged out: the next reload says so
    list.innerHTML = await response.text();
    if (stale) stale.hidden = true;
  }

  function setText(selector, value) {
    document.querySelectorAll(selector).forEach((element) => {
      if (element.textContent !== String(value)) element.textContent = String(value);
    });
  }

  function update(data) {
    const counts = data.counts || {};
    for (const state of ["pending", "firing", "acknowledged", "incidents"]) {
      if (state in counts) setText(`[data-count="${state}"]`, counts[state]);
    }
    for (const [severity, count] of Object.entries(counts.severity || {})) {
      setText(`[data-severity="${severity}"]`, count);
    }
    if (firing && "firing" in counts) {
      firing.textContent = String(counts.firing);
      const tile = firing.closest(".tile");
      if (tile) tile.classList.toggle("bad", counts.firing > 0);
    }
    if (data.version === version) return;
    version = data.version;
    if (!list || list.dataset.live !== "1") return;
    if (busy()) {
      if (stale) stale.hidden = false;
    } else {
      refresh().catch(() => { if (stale) stale.hidden = false; });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (live || firing) FK.live("/ui/events/alerts", update);
    if (stale) {
      stale.querySelector("button").addEventListener("click", () => {
        document.querySelectorAll('input[name="ids"]:checked').forEach((box) => { box.checked = false; });
        refresh().catch(() => window.location.reload());
      });
    }
    // A bulk form's dangerous button asks first (the form has two buttons, so not data-confirm).
    document.querySelectorAll("form#bulk").forEach((form) => {
      form.addEventListener("submit", (event) => {
        const button = event.submitter;
        if (button && button.dataset.confirmAction && !window.confirm(button.dataset.confirmAction)) {
          event.preventDefault();
        }
      });
    });
  });
})();
