// The live event stream of the user's tenants (/ws/events/), applied to the page without reloads:
// instance states, addresses, memory and faults wherever [data-instance] marks an instance; new
// instances appear in the list; operations update their row (state, step, progress); the overview
// page lists the newest events. Reconnects with backoff.
(function () {
  "use strict";
  const status = document.getElementById("live-status");
  const list = document.getElementById("instances");
  const ops = document.getElementById("operations");
  const feed = document.getElementById("events");
  let delay = 1000;
  const heard = {};  // instance or operation id -> when its last event arrived (ms)

  function show(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = "badge " + (cls || "");
  }

  function setState(el, state) {
    el.textContent = state;
    el.className = "state state-" + state;
  }

  function fetchRow(uuid) {
    const url = list.dataset.rowUrl + uuid + "/row/";
    fetch(url, {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.text() : "";
    }).then(function (html) {
      if (!html || list.querySelector('tr[data-instance="' + uuid + '"]')) return;
      const body = list.tBodies[0];
      body.insertAdjacentHTML("afterbegin", html.trim());
      const empty = document.getElementById("no-instances");
      if (empty) empty.remove();
    });
  }

  function onInstance(ev) {
    for (const scope of document.querySelectorAll('[data-instance="' + ev.instance + '"]')) {
      scope.dataset.state = ev.state;
      for (const el of scope.querySelectorAll('[data-live="state"]')) setState(el, ev.state);
      if ("fault" in ev) {
        for (const el of scope.querySelectorAll('[data-live="fault"]')) el.textContent = ev.fault || "none";
      }
      for (const key of ["ip_address", "current_ram_mib", "oom_kills"]) {
        if (key in ev && ev[key] !== null && ev[key] !== undefined) {
          for (const el of scope.querySelectorAll('[data-live="' + key + '"]')) el.textContent = ev[key];
        }
      }
    }
    if (!list) return;
    const row = list.querySelector('tr[data-instance="' + ev.instance + '"]');
    const unfiltered = !list.dataset.filterKind && !list.dataset.filterQ &&
      (list.dataset.filterState === "active" || list.dataset.filterState === "");
    if (!row && unfiltered && ev.state !== "deleted") fetchRow(ev.instance);
    if (row && ev.state === "deleted" && list.dataset.filterState === "active") row.remove();
  }

  function cell(row, key) {
    return row.querySelector('[data-live="' + key + '"]');
  }

  function onOperation(ev) {
    if (!ops || ops.dataset.instanceOps !== ev.instance) return;
    let row = ops.querySelector('tr[data-operation="' + ev.operation + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.dataset.operation = ev.operation;
      row.innerHTML = "<td></td><td><span data-live=\"state\"></span> <span class=\"error\" data-live=\"error\"></span></td>" +
        "<td><progress class=\"progress\" max=\"100\" data-live=\"progress\"></progress></td>" +
        "<td class=\"hide-narrow\" data-live=\"step\"></td><td class=\"hide-narrow\"></td>";
      row.firstChild.textContent = ev.kind;
      row.cells[4].textContent = new Date().toLocaleTimeString();
      ops.tBodies[0].prepend(row);
    }
    setState(cell(row, "state"), ev.state);
    const progress = cell(row, "progress");
    progress.value = ev.progress;
    progress.textContent = ev.progress + "%";
    progress.setAttribute("aria-label", ev.kind + " progress");
    cell(row, "step").textContent = ev.step || "";
    cell(row, "error").textContent = ev.error || "";
  }

  function onAny(ev) {
    if (!feed) return;
    const li = document.createElement("li");
    const when = ev.at ? new Date(ev.at).toLocaleTimeString() : new Date().toLocaleTimeString();
    let text = when + " · " + ev.type;
    if (ev.name) text += " · " + ev.name;
    if (ev.state) text += " → " + ev.state;
    if (ev.tenant) text += " · " + ev.tenant;
    li.textContent = text;
    feed.prepend(li);
    while (feed.children.length > 20) feed.removeChild(feed.lastChild);
  }

  // Events sent while the page loaded, or while the socket was down, are not replayed: on every
  // (re)connection the page asks the API for the current state of what it shows.
  function resync() {
    const slug = document.body.dataset.tenant;
    if (!slug) return;
    const asked = Date.now();
    // An event that arrives while the API is being asked is newer than its answer: it wins.
    const stale = function (id) { return (heard[id] || 0) >= asked; };
    const json = {credentials: "same-origin", headers: {"Accept": "application/json"}};
    const ids = Array.from(new Set(Array.from(document.querySelectorAll("[data-instance]"),
      function (el) { return el.dataset.instance; }))).slice(0, 50);
    for (const id of ids) {
      fetch("/api/v1/tenants/" + slug + "/instances/" + id + "/", json)
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (i) {
          if (!i || stale(i.id)) return;
          onInstance({instance: i.id, state: i.state, fault: i.fault, ip_address: i.ip_address,
            current_ram_mib: i.current_ram_mib, oom_kills: i.oom_kills});
        })
        .catch(function () {});
    }
    if (ops) {
      const instance = ops.dataset.instanceOps;
      fetch("/api/v1/tenants/" + slug + "/operations/?page_size=20&instance=" + instance, json)
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          for (const op of (body && body.results) || []) {
            if (stale(op.id)) continue;
            onOperation({operation: op.id, instance: instance, kind: op.kind, state: op.state,
              step: op.step, progress: op.progress, error: op.error});
          }
        })
        .catch(function () {});
    }
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws/events/");
    ws.onopen = function () {
      delay = 1000;
      show("live", "ok");
      document.body.dataset.live = "1";
      resync();
    };
    ws.onmessage = function (msg) {
      const ev = JSON.parse(msg.data);
      if (ev.type === "hello" || ev.type === "pong") return;
      if (ev.instance) heard[ev.instance] = Date.now();
      if (ev.operation) heard[ev.operation] = Date.now();
      if (ev.type === "instance.state") onInstance(ev);
      if (ev.type === "operation") onOperation(ev);
      onAny(ev);
    };
    ws.onclose = function () {
      document.body.dataset.live = "";
      show("reconnecting…", "warn");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
