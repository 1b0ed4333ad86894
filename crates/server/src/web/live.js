// Live updates of the overview: the server says "change" on /events (at most
// twice a second); the page then fetches its main part again and swaps it in.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.pathname + "?part=main", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { main.innerHTML = html; } })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  var events = new EventSource("/events");
  events.addEventListener("change", refresh);
})();
