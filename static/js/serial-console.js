// The interactive serial console of a VM: xterm.js in the page, bytes both ways through the
// portal's websocket (/ws/instances/<id>/terminal/), which the VM's host agent relays to its pty.
// A module: it imports the vendored ES modules of xterm.js and its fit add-on.
import { Terminal } from "../vendor/xterm/xterm.mjs";
import { FitAddon } from "../vendor/xterm-addon-fit/addon-fit.mjs";

// xterm.js writes its theme and cell sizes into style elements, which this site's
// Content-Security-Policy refuses (no 'unsafe-inline'). Constructed stylesheets are not inline
// styles: give xterm.js an inert element whose text goes into one of those instead.
function constructedStyles(doc) {
  const create = doc.createElement;
  doc.createElement = function (tag, options) {
    if (String(tag).toLowerCase() !== "style") return create.call(this, tag, options);
    const sheet = new CSSStyleSheet();
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
    const element = create.call(this, "template");
    let text = "";
    Object.defineProperty(element, "textContent", {
      configurable: true,
      get: () => text,
      set: (value) => { text = String(value ?? ""); sheet.replaceSync(text); },
    });
    element.remove = () => {
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
      Element.prototype.remove.call(element);
    };
    return element;
  };
}

const box = document.getElementById("terminal");
const status = document.getElementById("terminal-status");
const again = document.getElementById("terminal-reconnect");
const id = JSON.parse(document.getElementById("instance-id").textContent);
const slug = JSON.parse(document.getElementById("tenant-slug").textContent);
const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const encoder = new TextEncoder();

function say(text, state) {
  status.textContent = text;
  box.dataset.state = state;
  again.hidden = state === "connected" || state === "connecting";
}

let term = null;
let fit = null;
let socket = null;

function terminal() {
  if (term) return term;
  constructedStyles(document);
  term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000 });
  fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  // Keys and pastes go to the guest as UTF-8 (the server drops them for a read-only session).
  term.onData((data) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
  term.onBinary((data) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(Uint8Array.from(data, (c) => c.charCodeAt(0)));
  });
  return term;
}

async function connect() {
  say("connecting…", "connecting");
  let body;
  try {
    const response = await fetch(`/api/v1/tenants/${slug}/instances/${id}/console/terminal/`, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRFToken": csrf, "Accept": "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ input: true }),
    });
    body = await response.json();
    if (!response.ok) { say(body.detail || "unavailable", "unavailable"); return; }
  } catch (error) {
    say(`unavailable: ${error}`, "unavailable");
    return;
  }
  const t = terminal();
  socket = new WebSocket(`${scheme}${location.host}${body.url}?token=${encodeURIComponent(body.token)}`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    say(body.input ? "connected" : "connected (read only)", "connected");
    t.focus();
    // Said here, not sent: a key sent on the user's behalf could answer a question they never saw.
    t.write(body.input ? "\x1b[2m[connected: press Enter for a prompt]\x1b[0m\r\n"
      : "\x1b[2m[connected, read only]\x1b[0m\r\n");
  };
  socket.onmessage = (event) => {
    t.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
  };
  socket.onclose = (event) => {
    // 4409: not running, or its host's agent does not answer; 4503: the agent fell silent.
    const why = { 4403: "refused", 4409: "unavailable", 4503: "the host's agent stopped answering" };
    say(why[event.code] || "disconnected", "disconnected");
    socket = null;
  };
}

if (box) {
  again.addEventListener("click", () => connect());
  connect();
}
