// Live updates of the overview: the server says "change" on /events (at most
// twice a second); the page then fetches its main part again and swaps it in.
// When the server stops taking this reader (signed out, token removed or
// expired, certificate revoked), the page reloads, which leads to sign-in.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var busy = false, again = false;
  function refused(status) { return status === 401 || status === 403; }
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.pathname + "?part=main", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (refused(r.status)) { location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) { main.innerHTML = html; } })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  var events = new EventSource("/events");
  events.addEventListener("change", refresh);
  // A stream the server ended is reopened by the browser; one it refuses
  // (401) is closed for good: ask the page itself what to do.
  events.addEventListener("error", function () {
    if (events.readyState === EventSource.CLOSED) {
      fetch(location.pathname + "?part=main", { cache: "no-store", credentials: "same-origin" })
        .then(function (r) { if (refused(r.status)) { location.reload(); } })
        .catch(function () {});
    }
  });
})();
