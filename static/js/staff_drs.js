// The staff DRS page, live: a staff user's socket (/ws/events/) hears "drs" events (a pass ran, a
// recommendation started or ended, an instance waits to be placed or was placed, a what-if was
// computed, the settings changed). The page then reads itself again and swaps in the sections that
// changed ([data-live-section]), except one a staff member is typing in (a reason, the what-if
// form): that one is marked stale instead and left alone. Reconnects with backoff, and reads the
// page again on every (re)connection and on "resync" (events may have been lost meanwhile).
(function () {
  "use strict";
  const status = document.getElementById("live-status");
  let delay = 1000;
  let timer = null;
  let busy = false;
  let again = false;

  function show(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = "badge " + (cls || "");
  }

  function dirty(section) {
    const active = document.activeElement;
    if (active && active !== document.body && section.contains(active) && active.matches("input, select, textarea")) {
      return true;
    }
    for (const el of section.querySelectorAll("input, textarea")) {
      if (el.type !== "hidden" && el.value !== el.defaultValue) return true;
    }
    for (const el of section.querySelectorAll("select")) {
      for (const option of el.options) if (option.selected !== option.defaultSelected) return true;
    }
    return false;
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const answer = await fetch(location.pathname + location.search, { credentials: "same-origin" });
      if (!answer.ok) return;
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      for (const section of fresh.querySelectorAll("[data-live-section]")) {
        const old = document.getElementById(section.id);
        if (!old || old.innerHTML === section.innerHTML) continue;
        if (dirty(old)) {
          old.dataset.stale = "1";
          continue;
        }
        old.replaceWith(document.importNode(section, true));
      }
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || "0") + 1);
    } catch (err) {
      // The next event (or reconnection) reads the page again.
    } finally {
      busy = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 200);  // a pass's burst of events is read once
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws/events/");
    ws.onopen = function () {
      delay = 1000;
      show("live", "ok");
      document.body.dataset.live = "1";
      schedule();
    };
    ws.onmessage = function (msg) {
      const ev = JSON.parse(msg.data);
      if (ev.type === "drs" || ev.type === "resync") schedule();
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
