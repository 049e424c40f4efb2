// The device list: keeps "N ticked" current as row boxes are ticked.
// The page works without this script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("bulk");
  const counter = form && form.querySelector("[data-selected-count]");
  if (!counter) return;
  const update = () => {
    counter.textContent = String(form.querySelectorAll('input[name="device"]:checked').length);
  };
  // fk.js ticks the row boxes for the select-all box in its own handler: count after it.
  form.addEventListener("change", () => window.setTimeout(update, 0));
  update();
});
