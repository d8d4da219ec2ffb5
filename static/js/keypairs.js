// The download link of a generated private key, made here in the browser: the key never goes
// back to the server. The link stays hidden without JavaScript (the text can still be copied).
(function () {
  "use strict";
  document.querySelectorAll("a[data-source]").forEach(function (link) {
    var source = document.getElementById(link.dataset.source);
    if (!source) return;
    var text = source.value.endsWith("\n") ? source.value : source.value + "\n";
    var blob = new Blob([text], { type: "application/octet-stream" });
    link.href = URL.createObjectURL(blob);
    link.download = link.dataset.filename || "id_ed25519";
    link.hidden = false;
  });
})();
