// Fleetkeeper dashboard: a little JavaScript of our own, no framework, no build step.
// Everything is progressive: pages work without it; it adds maps, charts, live updates,
// select-all boxes and confirmations. Page-specific code lives in its own file.
"use strict";

const FK = {
  csrf() {
    const main = document.getElementById("main");
    return main ? main.dataset.csrf : "";
  },
  async json(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response.json();
  },
  // Server-sent events: `handler(data)` for each message; reconnects on its own.
  live(url, handler) {
    if (!window.EventSource) return null;
    const source = new EventSource(url, { withCredentials: true });
    source.onmessage = (event) => handler(JSON.parse(event.data));
    return source;
  },
  map(element) {
    if (!window.L) return;
    const map = L.map(element, { worldCopyJump: true, attributionControl: false });
    map.setView([20, 0], 2);
    // No tile layer by default: the dashboard works without internet access. A server may
    // name one (data-tiles) that it is allowed to reach.
    if (element.dataset.tiles) L.tileLayer(element.dataset.tiles, { maxZoom: 19 }).addTo(map);
    L.control.scale().addTo(map);
    FK.json(element.dataset.source).then((data) => {
      const layer = L.geoJSON(data, {
        pointToLayer: (feature, latlng) => L.circleMarker(latlng, {
          radius: 5, weight: 1,
          color: feature.properties.online ? "#1d7a46" : "#b3261e",
          fillOpacity: 0.7,
        }),
        onEachFeature: (feature, marker) => {
          const p = feature.properties || {};
          const link = document.createElement("a");
          link.href = `/devices/${encodeURIComponent(feature.id || p.id || "")}`;
          link.textContent = p.serial || p.ts || feature.id || "";
          marker.bindPopup(link);
        },
      }).addTo(map);
      if (data.features && data.features.length) map.fitBounds(layer.getBounds(), { maxZoom: 14, padding: [20, 20] });
      if (element.dataset.track === "line" && data.features && data.features.length > 1) {
        const points = data.features.map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0]]);
        L.polyline(points, { color: "#1f5fbf", weight: 2 }).addTo(map);
      }
    }).catch((error) => { element.textContent = `The map could not be loaded (${error.message}).`; });
  },
};

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".map[data-source]").forEach((element) => FK.map(element));
  // A box that selects every row box of its table (bulk actions).
  document.querySelectorAll("input[data-select-all]").forEach((all) => {
    all.addEventListener("change", () => {
      document.querySelectorAll(`input[name="${all.dataset.selectAll}"]`).forEach((box) => { box.checked = all.checked; });
    });
  });
  // Forms that ask before they act.
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
});
window.FK = FK;
