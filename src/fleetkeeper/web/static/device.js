// The device page: one plotly chart per metric, over 1h / 24h / 7d / 30d; zooming into a
// chart (drag, or the mode bar) fetches that stretch again, finer, from the server, which
// picks raw points for short ranges and buckets (average with a min-max band) for long ones.
// The map of the position history is fk.js's (data-track="line").
"use strict";

(() => {
  const COLOR = "#1f5fbf";
  let range = "24h";

  // Plotly reports ranges of a date axis as "2026-01-31 12:00:00.123", in UTC for our
  // millisecond x values; the server takes Unix seconds.
  const seconds = (value) => (typeof value === "number"
    ? value / 1000
    : Date.parse(`${String(value).replace(" ", "T")}Z`) / 1000);

  function traces(data, metric) {
    const x = data.points.map((p) => p.t);
    const out = [];
    if (data.step) {
      const band = { x, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false };
      out.push({ ...band, y: data.points.map((p) => p.max), name: "max" });
      out.push({ ...band, y: data.points.map((p) => p.min), name: "min", fill: "tonexty", fillcolor: "rgba(31,95,191,0.15)" });
    }
    out.push({
      x,
      y: data.points.map((p) => p.v),
      name: data.step ? `${metric} (average per ${data.step} s)` : metric,
      mode: data.points.length > 200 ? "lines" : "lines+markers",
      line: { color: COLOR, width: 1.5 },
      marker: { size: 3, color: COLOR },
    });
    return out;
  }

  function draw(element, data) {
    const layout = {
      height: 260,
      margin: { l: 52, r: 12, t: 8, b: 36 },
      showlegend: false,
      xaxis: { type: "date", range: [data.from, data.to] },
      yaxis: { automargin: true, fixedrange: true },
    };
    if (!data.points.length) {
      layout.annotations = [{ text: "no data in this range", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }];
    }
    window.Plotly.react(element, traces(data, element.dataset.metric), layout, {
      displaylogo: false,
      responsive: true,
      modeBarButtonsToRemove: ["select2d", "lasso2d"],
    });
    if (element.dataset.bound) return;
    element.dataset.bound = "1";
    element.on("plotly_relayout", (change) => {
      if (change["xaxis.range[0]"] !== undefined) {
        load(element, seconds(change["xaxis.range[0]"]), seconds(change["xaxis.range[1]"]));
      } else if (change["xaxis.autorange"]) {
        load(element, `-${range}`);
      }
    });
  }

  async function load(element, from, to) {
    const params = new URLSearchParams({ metric: element.dataset.metric, from: String(from) });
    if (to !== undefined) params.set("to", String(to));
    const ticket = `${Date.now()}-${Math.random()}`;
    element.dataset.ticket = ticket;
    element.setAttribute("aria-busy", "true");
    try {
      const data = await FK.json(`${element.dataset.source}?${params}`);
      if (element.dataset.ticket === ticket) draw(element, data); // else a newer one follows
    } catch (error) {
      element.textContent = `The chart could not be loaded (${error.message}).`;
    } finally {
      element.removeAttribute("aria-busy");
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const charts = document.querySelectorAll(".chart[data-metric]");
    if (!charts.length || !window.Plotly) return;
    const buttons = document.querySelectorAll("button[data-range]");
    const show = (chosen) => {
      range = chosen;
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === chosen)));
      charts.forEach((element) => load(element, `-${chosen}`));
    };
    buttons.forEach((button) => button.addEventListener("click", () => show(button.dataset.range)));
    show(range);
  });
})();
