// Live event stream: opens /ws/events/, shows the newest events, and reconnects with backoff.
(function () {
  "use strict";
  const list = document.getElementById("events");
  const status = document.getElementById("live-status");
  if (!list || !status) return;
  let delay = 1000;
  function show(text, cls) { status.textContent = text; status.className = "badge " + (cls || ""); }
  function add(event) {
    const li = document.createElement("li");
    const when = event.at ? new Date(event.at).toLocaleTimeString() : new Date().toLocaleTimeString();
    li.textContent = when + " · " + event.type + (event.tenant ? " · " + event.tenant : "");
    list.prepend(li);
    while (list.children.length > 20) list.removeChild(list.lastChild);
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws/events/");
    ws.onopen = function () { delay = 1000; show("live", "ok"); };
    ws.onmessage = function (msg) {
      const event = JSON.parse(msg.data);
      if (event.type !== "hello") add(event);
    };
    ws.onclose = function () {
      show("reconnecting…", "warn");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
