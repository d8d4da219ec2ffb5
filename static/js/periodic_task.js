// django-celery-beat's periodic task form: the crontab's help text says the chosen schedule in
// words (moved out of the package's inline script, for the Content-Security-Policy).
(function () {
  "use strict";
  const $ = django.jQuery;
  const readable = JSON.parse(document.getElementById("readable-crontabs").textContent);
  const help = document.querySelector(".field-crontab .help");
  const original = help ? help.textContent.trim() : "";
  $(".field-crontab_translation").hide();
  $(".field-crontab").change(function () {
    if (!help) return;
    const chosen = document.getElementById("id_crontab").value;
    help.textContent = original;
    help.append(document.createElement("br"), "Translation: " + (readable[chosen] || ""));
  });
})();
