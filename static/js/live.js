// The live event stream of the user's tenants (/ws/events/), applied to the page without reloads:
// instance states, addresses, memory and faults wherever [data-instance] marks an instance; new
// instances appear in their place on the list's first page (the server says whether they match
// its filters); operations update their row (state, step, progress); the overview page lists the
// newest events. Reconnects with backoff, and catches up on every (re)connection before it says
// "live"; and again when the server says "resync" (Redis lost the channel groups, and with them
// the events sent meanwhile: the server joined them again).
(function () {
  "use strict";
  const status = document.getElementById("live-status");
  const list = document.getElementById("instances");
  const ops = document.getElementById("operations");
  const feed = document.getElementById("events");
  let delay = 1000;
  let generation = 0;  // counts connections: a catch-up of a closed one must not say "live"
  // When the last event about an instance's state (or an operation) arrived, in ms, and the last
  // such event of each instance. Only these events count: an operation event names its instance
  // but says nothing of the instance's state, so it must not make a catch-up answer look stale.
  const heard = {};
  const latest = {};
  const fetching = {};  // instance id -> true while its list row is being asked for
  const refused = {};  // instance id -> the state it had when the list's filters left it out

  function show(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = "badge " + (cls || "");
  }

  function setState(el, state) {
    el.textContent = state;
    el.className = "state state-" + state;
  }

  function createdOf(row) {
    const time = row.querySelector("time[datetime]");
    return time ? Date.parse(time.getAttribute("datetime")) : 0;
  }

  // Put a row of the list in its place, newest first. A row older than the whole page belongs to
  // a later page when there is one, and is left out.
  function placeRow(row) {
    const body = list.tBodies[0];
    const when = createdOf(row);
    for (const other of Array.from(body.rows)) {
      if (createdOf(other) < when) {
        body.insertBefore(row, other);
        return true;
      }
    }
    if (list.dataset.more) return false;
    body.appendChild(row);
    return true;
  }

  function placed() {
    const empty = document.getElementById("no-instances");
    if (empty && list.tBodies[0].rows.length) empty.remove();
  }

  function fetchRow(uuid, state) {
    if (fetching[uuid] || refused[uuid] === state) return;
    fetching[uuid] = true;
    const asked = Date.now();
    const url = list.dataset.rowUrl + uuid + "/row/?" + (list.dataset.filters || "");
    fetch(url, {credentials: "same-origin"}).then(function (r) {
      if (r.status === 204) refused[uuid] = state;
      return r.status === 200 ? r.text() : "";
    }).catch(function () { return ""; }).then(function (html) {
      delete fetching[uuid];
      if (!html || list.querySelector('tr[data-instance="' + uuid + '"]')) return;
      delete refused[uuid];
      const template = document.createElement("template");
      template.innerHTML = html.trim();
      const row = template.content.querySelector("tr[data-instance]");
      if (!row || !placeRow(row)) return;
      placed();
      // An event that arrived while the row was being rendered is newer than the row.
      if ((heard[uuid] || 0) >= asked && latest[uuid]) onInstance(latest[uuid]);
    });
  }

  function onInstance(ev) {
    for (const scope of document.querySelectorAll('[data-instance="' + ev.instance + '"]')) {
      scope.dataset.state = ev.state;
      for (const el of scope.querySelectorAll('[data-live="state"]')) setState(el, ev.state);
      if ("fault" in ev) {
        for (const el of scope.querySelectorAll('[data-live="fault"]')) el.textContent = ev.fault || "none";
      }
      for (const key of ["ip_address", "current_ram_mib", "current_cpu_pct", "oom_kills", "host"]) {
        if (key in ev && ev[key] !== null && ev[key] !== undefined) {
          for (const el of scope.querySelectorAll('[data-live="' + key + '"]')) el.textContent = ev[key];
        }
      }
      if ("migration_host" in ev) {
        const moving = ev.migration_host ? " moving to " + ev.migration_host : "";
        for (const el of scope.querySelectorAll('[data-live="migration_host"]')) el.textContent = moving;
      }
    }
    if (!list) return;
    const row = list.querySelector('tr[data-instance="' + ev.instance + '"]');
    if (!row && list.dataset.firstPage && ev.state !== "deleted") fetchRow(ev.instance, ev.state);
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

  // The list asks for its own page again (same filters, same cursor): one request brings the
  // states of its rows, the instances created meanwhile (on the first page) and the counts.
  // Returns the ids it brought.
  function resyncList(stale) {
    return fetch(location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.text(); })
      .then(function (html) {
        const doc = new DOMParser().parseFromString(html, "text/html");
        const table = doc.getElementById("instances");
        if (!table) return [];
        const ids = [];
        for (const fresh of Array.from(table.querySelectorAll("tr[data-instance]"))) {
          const id = fresh.dataset.instance;
          ids.push(id);
          if (stale(id)) continue;
          if (list.querySelector('tr[data-instance="' + id + '"]')) {
            const ip = fresh.querySelector('[data-live="ip_address"]');
            onInstance({instance: id, state: fresh.dataset.state, ip_address: ip ? ip.textContent : null});
          } else if (list.dataset.firstPage && placeRow(document.importNode(fresh, true))) {
            placed();
          }
        }
        const counts = doc.getElementById("state-counts");
        const shown = document.getElementById("state-counts");
        if (counts && shown) shown.replaceChildren(...Array.from(counts.childNodes, function (n) {
          return document.importNode(n, true);
        }));
        return ids;
      })
      .catch(function () { return []; });
  }

  // Events sent while the page loaded, or while the socket was down, are not replayed: on every
  // (re)connection the page asks for the current state of what it shows. Resolves when done.
  function resync() {
    const slug = document.body.dataset.tenant;
    if (!slug) return Promise.resolve();
    const asked = Date.now();
    // An event that arrives while the server is being asked is newer than its answer: it wins.
    const stale = function (id) { return (heard[id] || 0) >= asked; };
    const json = {credentials: "same-origin", headers: {"Accept": "application/json"}};
    const work = [];
    work.push((list ? resyncList(stale) : Promise.resolve([])).then(function (done) {
      const ids = Array.from(new Set(Array.from(document.querySelectorAll("[data-instance]"),
        function (el) { return el.dataset.instance; }))).filter(function (id) {
        return done.indexOf(id) < 0;
      }).slice(0, 50);
      return Promise.all(ids.map(function (id) {
        return fetch("/api/v1/tenants/" + slug + "/instances/" + id + "/", json)
          .then(function (r) {
            if (r.status === 404) return {id: id, state: "deleted"};  // gone while we were away
            return r.ok ? r.json() : null;
          })
          .then(function (i) {
            if (!i || stale(i.id)) return;
            onInstance({instance: i.id, state: i.state, fault: i.fault, ip_address: i.ip_address,
              current_ram_mib: i.current_ram_mib, current_cpu_pct: i.current_cpu_pct, oom_kills: i.oom_kills});
          })
          .catch(function () {});
      }));
    }));
    if (ops) {
      const instance = ops.dataset.instanceOps;
      work.push(fetch("/api/v1/tenants/" + slug + "/operations/?page_size=20&instance=" + instance, json)
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          for (const op of (body && body.results) || []) {
            if (stale(op.id)) continue;
            onOperation({operation: op.id, instance: instance, kind: op.kind, state: op.state,
              step: op.step, progress: op.progress, error: op.error});
          }
        })
        .catch(function () {}));
    }
    return Promise.all(work);
  }

  // Events flow from now on; "live" once what the page shows has caught up with the server. A
  // newer catch-up (or a closed connection) makes an older one's answer too old to say "live".
  function catchUp() {
    const mine = ++generation;
    document.body.dataset.live = "";
    show("catching up…", "warn");
    resync().then(function () {
      if (mine !== generation) return;
      show("live", "ok");
      document.body.dataset.live = "1";
    });
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws/events/");
    ws.onopen = function () {
      delay = 1000;
      catchUp();
    };
    ws.onmessage = function (msg) {
      const ev = JSON.parse(msg.data);
      if (ev.type === "hello" || ev.type === "pong") return;
      if (ev.type === "resync") {
        catchUp();
        return;
      }
      if (ev.type === "instance.state") {
        heard[ev.instance] = Date.now();
        latest[ev.instance] = ev;
        onInstance(ev);
      }
      if (ev.type === "operation") {
        heard[ev.operation] = Date.now();
        onOperation(ev);
      }
      onAny(ev);
    };
    ws.onclose = function () {
      generation++;
      document.body.dataset.live = "";
      show("reconnecting…", "warn");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
