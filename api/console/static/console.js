// jobline console: live updates from /events (Server-Sent Events; the session cookie
// authenticates the stream). Plain JavaScript, no build step.
(function () {
  "use strict";
  var body = document.body;
  var mode = body.dataset.live;
  if (!mode || !window.EventSource) return;
  var state = document.getElementById("live-state");
  var url = "/events";
  if (mode === "job") url += "?job_id=" + body.dataset.jobId + "&after=" + body.dataset.after;
  var source = new EventSource(url);
  var timer = null;

  source.onopen = function () { if (state) { state.textContent = "live"; state.className = "live-state on"; } };
  source.onerror = function () { if (state) { state.textContent = "reconnecting"; state.className = "live-state"; } };

  // Reload the page's content in place (overview, job page): at most every 500 ms.
  function refresh() {
    if (timer) return;
    timer = setTimeout(function () {
      timer = null;
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (!html) return;
          var next = new DOMParser().parseFromString(html, "text/html");
          var content = next.getElementById("content");
          if (content) document.getElementById("content").replaceWith(content);
          if (mode === "job" && next.body.dataset.after) body.dataset.after = next.body.dataset.after;
        });
    }, 500);
  }

  // The job table: a row's status changes in place, so a retried job stays in view.
  var PHASE = {
    initialized: "queued", configured: "queued", ready: "queued", queued: "queued",
    started: "in-progress", pre_processing: "in-progress", processing: "in-progress",
    post_processing: "in-progress", processed: "in-progress", start_publication: "in-progress",
    published: "in-progress", done: "complete", internal_error: "failed", external_error: "failed",
    error_checked: "failed", cancelled: "failed", expired: "expired"
  };
  function updateRow(change) {
    var row = document.querySelector('tr[data-job-id="' + change.job_id + '"]');
    if (!row) return;
    var cell = row.querySelector("[data-status]");
    cell.textContent = change.to_status;
    cell.className = "status phase-" + (PHASE[change.to_status] || "queued") + " changed";
    var when = row.querySelector("[data-changed]");
    if (when && change.changed_at) when.textContent = change.changed_at.replace("T", " ").slice(0, 19);
  }

  source.addEventListener("status", function (event) {
    var change = JSON.parse(event.data);
    if (mode === "jobs") updateRow(change); else refresh();
  });
})();
