// One instance's page: the live tail of its serial console (or a container's output), and
// sparklines of its CPU and memory drawn from the metrics API, refreshed every 10 seconds.
(function () {
  "use strict";
  const id = JSON.parse(document.getElementById("instance-id").textContent);
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";

  function followSerial() {
    const out = document.getElementById("serial");
    if (!out) return;
    let delay = 1000;
    function connect() {
      const ws = new WebSocket(scheme + location.host + "/ws/instances/" + id + "/serial/");
      ws.onopen = function () { delay = 1000; };
      const note = document.getElementById("serial-status");
      ws.onmessage = function (msg) {
        const event = JSON.parse(msg.data);
        // The host's agent stopped answering (or answers again): say so; the stream resumes by itself.
        if (event.type === "unavailable" && note) note.textContent = event.detail || "the host's agent does not answer";
        if (event.type === "available" && note) note.textContent = "";
        out.textContent = (out.textContent + event.data).slice(-20000);
        out.scrollTop = out.scrollHeight;
      };
      ws.onclose = function (event) {
        if (event.code >= 4400 && event.code < 4500) return;  // refused: not for this user
        out.textContent = "";  // the server sends the whole tail again on reconnect
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 30000);
      };
    }
    connect();
  }

  function draw(svg, values, max) {
    const line = svg.querySelector("polyline");
    if (values.length < 2) { line.setAttribute("points", ""); return; }
    const top = Math.max(max, 1e-9);
    const step = 300 / (values.length - 1);
    line.setAttribute("points", values.map(function (v, i) {
      return (i * step).toFixed(1) + "," + (40 - Math.min(v / top, 1) * 38 - 1).toFixed(1);
    }).join(" "));
  }

  function metrics() {
    const box = document.getElementById("metrics");
    if (!box) return;
    fetch(box.dataset.url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) return;
        const points = body.points || body.results || body;
        if (!Array.isArray(points) || points.length === 0) return;
        const cpu = points.map(function (p) { return p.cpu_pct || 0; });
        const mem = points.map(function (p) { return (p.mem_bytes || 0) / 1048576; });
        draw(document.getElementById("spark-cpu"), cpu, Math.max(100, Math.max.apply(null, cpu)));
        draw(document.getElementById("spark-mem"), mem, Math.max.apply(null, mem));
        box.querySelector('[data-metric="cpu"]').textContent = cpu[cpu.length - 1].toFixed(1) + "% of a CPU now";
        box.querySelector('[data-metric="mem"]').textContent = mem[mem.length - 1].toFixed(0) + " MiB now";
      })
      .catch(function () {});
  }

  followSerial();
  metrics();
  setInterval(metrics, 10000);
})();
