// Forecast job pages: live state and progress (polling the status endpoint), the form's summary,
// and the lead-time slider of the map gallery. No framework, no CDN.
(function () {
  "use strict";

  // --- live progress on the list and the detail page ---------------------------------------------
  const table = document.getElementById("job-table");
  const status = document.getElementById("job-status");
  const holder = table || status;
  if (holder) {
    const url = holder.dataset.statusUrl;
    const rows = () => (table ? [...table.querySelectorAll("tr[data-job]")] : [status]);
    const finals = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
    const poll = async () => {
      const open = rows().filter((row) => !finals.has(row.dataset.state || ""));
      if (!open.length) return;
      const query = open.map((row) => `id=${encodeURIComponent(row.dataset.job)}`).join("&");
      try {
        const response = await fetch(`${url}?${query}`, { headers: { Accept: "application/json" } });
        if (!response.ok) return;
        const data = await response.json();
        for (const job of data.jobs) {
          const row = rows().find((r) => r.dataset.job === job.id);
          if (!row) continue;
          const was = row.dataset.state;
          row.dataset.state = job.state;
          const badge = row.querySelector("[data-field=state]");
          badge.textContent = job.state_label;
          badge.className = `badge job-state state-${job.state.toLowerCase()}`;
          const bar = row.querySelector("[data-field=progress]");
          bar.value = job.progress;
          bar.textContent = `${Math.round(job.progress)} %`;
          row.querySelector("[data-field=progress-text]").textContent = `${Math.round(job.progress)} %`;
          const eta = row.querySelector("[data-field=eta]");
          if (eta) eta.textContent = job.eta_seconds != null && !finals.has(job.state) ? `about ${job.eta_seconds} s left` : "";
          const reason = row.querySelector("[data-field=reason]");
          if (reason) reason.textContent = job.reason;
          // The detail page shows its maps and downloads once the job has ended.
          if (status && finals.has(job.state) && was !== job.state) location.reload();
        }
      } catch (err) {
        // A failed poll is retried at the next tick.
      }
    };
    setInterval(poll, 1500);
  }

  // --- the gallery: a lead-time slider per feature ------------------------------------------------
  document.querySelectorAll("figure.frames").forEach((figure) => {
    const slider = figure.querySelector("[data-field=slider]");
    if (!slider) return;
    const frames = JSON.parse(figure.querySelector("[data-field=frames]").textContent);
    const image = figure.querySelector("[data-field=image]");
    const lead = figure.querySelector("[data-field=lead]");
    slider.addEventListener("input", () => {
      const frame = frames[parseInt(slider.value, 10)];
      image.src = frame.src;
      image.alt = image.alt.replace(/lead \d+ h/, `lead ${frame.lead} h`);
      lead.textContent = frame.lead;
    });
  });

  // --- the form's live summary --------------------------------------------------------------------
  const form = document.getElementById("job-form");
  if (form) {
    const value = (name) => form.elements[name] ? form.elements[name].value : "";
    const summary = document.getElementById("job-summary");
    const leadsOf = (hours, step) => {
      const leads = [];
      for (let h = step; h <= hours; h += step) leads.push(h);
      if (!leads.length || leads[leads.length - 1] !== hours) leads.push(hours);
      return leads;
    };
    const update = () => {
      const begin = Date.parse(value("start_time_begin") + "Z");
      const end = Date.parse(value("start_time_end") + "Z");
      const interval = parseInt(value("start_time_interval_hours"), 10);
      const lead = parseInt(value("forecast_lead_hours"), 10);
      const features = form.querySelectorAll("input[name=forecast_features]:checked").length;
      const members = parseInt(value("num_ensembles"), 10) || 0;
      const drawing = form.elements.draw_figures && form.elements.draw_figures.checked;
      if (Number.isNaN(begin) || Number.isNaN(end) || !(interval >= 1) || !(lead >= 1)) {
        summary.textContent = "Fill in the start times, the interval and the length to see what the job will do.";
        return;
      }
      if (end < begin) {
        summary.textContent = "The last forecast start is before the first: change one of them.";
        return;
      }
      const starts = Math.floor((end - begin) / 3600000 / interval) + 1;
      const results = leadsOf(lead, 6).length;
      const figures = drawing ? features * leadsOf(lead, 24).length + 1 : 0;
      let text = `${starts} forecast start${starts === 1 ? "" : "s"} × ${lead} h, ${results} result time${results === 1 ? "" : "s"} each`;
      text += `, ${features} feature${features === 1 ? "" : "s"}`;
      text += drawing ? `, ${figures} figure${figures === 1 ? "" : "s"} each.` : ", no figures.";
      if (members) text += ` Plus ${members} ensemble members per start (${starts * (members + 1)} forecasts in all).`;
      summary.textContent = text;
    };
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    update();
  }
})();
