// The create form: the flavor explained, images offered for the chosen kind, and a preview of the
// quota after the create (the server decides; this only shows what it will count).
(function () {
  "use strict";
  const form = document.getElementById("create-form");
  const catalog = JSON.parse(document.getElementById("catalog").textContent);
  if (!form || !catalog) return;
  const flavor = form.elements.namedItem("flavor");
  const image = form.elements.namedItem("image");
  const summary = document.getElementById("flavor-summary");
  const warning = document.getElementById("quota-warning");

  function kind() {
    const checked = form.querySelector("input[name=kind]:checked");
    return checked ? checked.value : "vm";
  }

  function filterImages() {
    const want = kind();
    let firstMatch = null;
    for (const option of image.options) {
      const info = catalog.images[option.value];
      const ok = !info || info.kind === want;
      option.hidden = !ok;
      option.disabled = !ok;
      if (ok && firstMatch === null) firstMatch = option;
    }
    if (image.selectedOptions.length === 0 || image.selectedOptions[0].disabled) {
      if (firstMatch) firstMatch.selected = true;
    }
  }

  function preview() {
    const f = catalog.flavors[flavor.value];
    summary.textContent = f ? f.summary : "";
    if (!f) return;
    const container = kind() === "container";
    const adds = {vcpus: f.vcpus, ram_mib: f.ram_mib, disk_gib: container ? 0 : f.disk_gib};
    adds[container ? "containers" : "instances"] = 1;
    const over = [];
    for (const row of document.querySelectorAll("#quota-preview tbody tr")) {
      const name = row.dataset.resource;
      const q = catalog.quota[name];
      if (!q) continue;
      const after = q.used + (adds[name] || 0);
      row.querySelector("[data-after]").textContent = after;
      const bar = row.querySelector(".bar");
      const share = q.limit > 0 ? Math.min(after / q.limit, 1) : 1;
      bar.firstElementChild.style.width = (share * 100).toFixed(0) + "%";
      bar.classList.toggle("err", after > q.limit);
      bar.classList.toggle("warn", after <= q.limit && share > 0.8);
      bar.setAttribute("aria-label", name + " after this: " + after + " of " + q.limit);
      if (after > q.limit) over.push(name + " (limit " + q.limit + ", would be " + after + ")");
    }
    warning.hidden = over.length === 0;
    warning.textContent = over.length ? "This would exceed the quota for " + over.join(", ") + "." : "";
  }

  form.addEventListener("change", function (event) {
    if (event.target.name === "kind") filterImages();
    preview();
  });
  filterImages();
  preview();
})();
