"""
The console's stylesheet and its few lines of script, vendored here and
served from C{/console/static/}: no CDN, no external fonts, nothing beyond
the admin listener.  The script only polls the JSON API for new jobs and
posts the action buttons (retry, cancel, reprint, pause, resume); every page works without it.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

CSS = b"""
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.8em 0}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
.failed,.down,.error{color:#b00}.done,.up{color:#070}.waiting{color:#a60}
form.filters input,form.filters select{margin-right:.5em}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em}
img.label{border:1px solid #999;max-width:420px;margin:.4em;background:#fff}
.warning{color:#a60}
form.action{display:inline-block;margin:.2em .4em .2em 0}
svg.chart{display:block;border:1px solid #ddd;background:#fff;margin:.4em 0}
svg.chart .grid{stroke:#eee}svg.chart .axis,svg.chart .legend{font-size:10px;fill:#555}
svg.chart polyline{stroke-width:1.5;fill:none}
svg.chart .done{stroke:#070}svg.chart .failed{stroke:#b00}svg.chart .p50{stroke:#06c}svg.chart .p99{stroke:#a60}
svg.chart circle.done,svg.chart tspan.done{fill:#070}svg.chart circle.failed,svg.chart tspan.failed{fill:#b00}
svg.chart circle.p50,svg.chart tspan.p50{fill:#06c}svg.chart circle.p99,svg.chart tspan.p99{fill:#a60}
svg.chart .legend tspan{stroke:none}
"""

JS = b"""
(function () {
  "use strict";
  var token = document.querySelector('meta[name="csrf-token"]');
  var shown = document.getElementById("action-result");
  var kept = window.sessionStorage && sessionStorage.getItem("rawsvc-result");
  if (shown && kept) { shown.textContent = kept; shown.className = "ok"; sessionStorage.removeItem("rawsvc-result"); }
  document.querySelectorAll("form.action").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = document.getElementById("action-result");
      var body = new URLSearchParams(new FormData(form));
      fetch(form.action, {method: "POST", body: body, headers: {"X-CSRF-Token": token.content}})
        .then(function (r) { return r.json(); })
        .then(function (j) {
          out.textContent = j.message || j.error;
          out.className = j.error ? "error" : "ok";
          if (!j.error) {
            if (window.sessionStorage) { sessionStorage.setItem("rawsvc-result", j.message); }
            setTimeout(function () { location.reload(); }, 800);
          }
        })
        .catch(function (e) { out.textContent = String(e); });
    });
  });
  var table = document.getElementById("jobs");
  if (!table || !table.dataset.poll) { return; }
  function cell(tr, text, href) {
    var td = document.createElement("td");
    if (href) { var a = document.createElement("a"); a.href = href; a.textContent = text; td.appendChild(a); }
    else { td.textContent = text; }
    tr.appendChild(td);
  }
  function poll() {
    fetch(table.dataset.poll, {headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json(); })
      .then(function (page) {
        if (!page.jobs) { return; }
        var body = document.createElement("tbody");
        page.jobs.forEach(function (j) {
          var tr = document.createElement("tr");
          tr.className = j.state;
          cell(tr, j.job_id, "/console/job/" + encodeURIComponent(j.job_id));
          cell(tr, j.trigger); cell(tr, new Date(j.received_at * 1000).toLocaleString());
          cell(tr, String(j.size)); cell(tr, j.state); cell(tr, j.destination || ""); cell(tr, j.error || "");
          body.appendChild(tr);
        });
        table.replaceChild(body, table.tBodies[0]);
      })
      .catch(function () {});
  }
  setInterval(poll, 500);
})();
"""


class Asset(Resource):
    """Fixed bytes of one type (a GET, or a HEAD with the same headers)."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"max-age=300")
        return self.body

    def render_HEAD(self, request: Any) -> bytes:
        request.setHeader(b"content-length", b"%d" % len(self.render_GET(request)))
        return b""


def static_resource() -> Resource:
    """C{/console/static/}: the stylesheet and the script."""
    root = Resource()
    root.putChild(b"console.css", Asset(CSS, b"text/css; charset=utf-8"))
    root.putChild(b"console.js", Asset(JS, b"text/javascript; charset=utf-8"))
    return root
