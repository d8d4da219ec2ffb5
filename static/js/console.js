// The console page: noVNC's screen (VMs) and the serial console or container output, live.
// A module: it imports noVNC's RFB class from the vendored ES modules.
import RFB from "../vendor/novnc/core/rfb.js";

const id = JSON.parse(document.getElementById("instance-id").textContent);
const slug = JSON.parse(document.getElementById("tenant-slug").textContent);
const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
const status = document.getElementById("vnc-status");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";

async function openScreen() {
  const response = await fetch(`/api/v1/tenants/${slug}/instances/${id}/console/vnc/`,
    {method: "POST", headers: {"X-CSRFToken": csrf, "Accept": "application/json"}, credentials: "same-origin"});
  const body = await response.json();
  if (!response.ok) { status.textContent = body.detail || "unavailable"; return; }
  const rfb = new RFB(document.getElementById("screen"), `${scheme}${location.host}${body.url}?token=${body.token}`,
    {credentials: {password: body.password}, wsProtocols: ["binary"]});
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { status.textContent = "connected"; });
  rfb.addEventListener("disconnect", () => { status.textContent = "disconnected"; });
}

function followSerial() {
  const out = document.getElementById("serial");
  const ws = new WebSocket(`${scheme}${location.host}/ws/instances/${id}/serial/`);
  const note = document.getElementById("serial-status");
  ws.onmessage = (msg) => {
    const event = JSON.parse(msg.data);
    // The host's agent stopped answering (or answers again): say so, the stream resumes by itself.
    if (event.type === "unavailable" && note) note.textContent = event.detail || "the host's agent does not answer";
    if (event.type === "available" && note) note.textContent = "";
    out.textContent = (out.textContent + event.data).slice(-20000);
    out.scrollTop = out.scrollHeight;
  };
}

if (document.getElementById("screen")) openScreen();
followSerial();
