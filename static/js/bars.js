// Bar gauges: each fill's width comes from its data-width (percent), set here rather than in a
// style attribute, which the Content-Security-Policy (style-src 'self') does not allow.
(function () {
  "use strict";
  for (const fill of document.querySelectorAll("[data-width]")) {
    const pct = Math.max(0, Math.min(100, Number(fill.dataset.width) || 0));
    fill.style.width = pct + "%";
  }
})();
