// The operations dashboard's charts (Chart.js, static/vendor/chart.umd.min.js), drawn from the
// JSON the page carries (console.selectors.dashboard_chart_data). The tables beside them hold the
// same figures for readers without the canvas.
(function () {
  "use strict";
  const source = document.getElementById("operations-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const PALETTE = ["#1f4bd8", "#d97706", "#177245", "#b42318", "#7c3aed", "#0e7490", "#be185d", "#4d7c0f",
    "#92400e", "#475569"];
  const colour = (n) => PALETTE[n % PALETTE.length];
  const names = Object.keys(data.models);
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.animation = false; // figures, not a show: drawn at once
  Chart.defaults.maintainAspectRatio = false;
  window.operationsCharts = {};

  function draw(id, config) {
    const canvas = document.getElementById(id);
    if (canvas) window.operationsCharts[id] = new Chart(canvas, config);
  }

  function stackedByModel(series, stack) {
    return names.map((name, n) => ({
      label: (name || "(no model)") + (stack ? " " + stack : ""),
      data: data.models[name][series],
      backgroundColor: colour(n),
      stack: stack || "all",
    }));
  }

  const stacked = {
    responsive: true,
    interaction: { mode: "index", intersect: false },
    // Counts: whole-number ticks only (Chart.js would label 0.5 calls on a small day).
    scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
  };

  draw("chart-requests", { type: "bar", data: { labels: data.days, datasets: stackedByModel("requests") }, options: stacked });
  draw("chart-errors", { type: "bar", data: { labels: data.days, datasets: stackedByModel("errors") }, options: stacked });

  // Two stacks a day, prompt and completion; the completion bars lighter, the legend one entry a model.
  const tokens = stackedByModel("prompt_tokens", "prompt").concat(
    stackedByModel("completion_tokens", "completion").map((set) => Object.assign(set, { backgroundColor: set.backgroundColor + "88" })));
  draw("chart-tokens", { type: "bar", data: { labels: data.days, datasets: tokens },
    options: Object.assign({}, stacked, { plugins: { legend: { labels: { filter: (item) => item.text.endsWith(" prompt") } } } }) });

  const lines = [
    ["latency_p50", "latency p50", colour(0), []],
    ["latency_p95", "latency p95", colour(0), [6, 4]],
    ["ttft_p50", "first token p50", colour(1), []],
    ["ttft_p95", "first token p95", colour(1), [6, 4]],
  ].map(([key, label, c, dash]) => ({ label: label, data: data.percentiles[key], borderColor: c, backgroundColor: c,
    borderDash: dash, spanGaps: true, pointRadius: 2 }));
  draw("chart-latency", { type: "line", data: { labels: data.days, datasets: lines },
    options: { responsive: true, interaction: { mode: "index", intersect: false },
      scales: { y: { beginAtZero: true, title: { display: true, text: "ms" } } } } });

  draw("chart-codes", { type: "bar",
    data: { labels: data.codes.map((c) => c[0]), datasets: [{ label: "failed calls", data: data.codes.map((c) => c[1]), backgroundColor: colour(3) }] },
    options: { indexAxis: "y", responsive: true, plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } } });

  // Quota bars: used, reserved and left add up to the provider's quota for the period.
  const providers = data.quotas.map((q) => q.provider + (q.period === "total" ? "" : " (" + q.period + ")"));
  const part = (key, label, c) => ({ label: label, data: data.quotas.map((q) => q[key]), backgroundColor: c });
  draw("chart-quotas", { type: "bar",
    data: { labels: providers, datasets: [part("used", "used", colour(0)), part("reserved", "reserved", colour(1)), part("left", "left", "#d5dae3")] },
    options: { indexAxis: "y", responsive: true, scales: { x: { stacked: true, beginAtZero: true, title: { display: true, text: "tokens" } }, y: { stacked: true } } } });

  draw("chart-jobs", { type: "bar",
    data: { labels: data.jobs.map((j) => j[0]), datasets: [{ label: "jobs", data: data.jobs.map((j) => j[1]), backgroundColor: colour(2) }] },
    options: { responsive: true, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } } });
})();
