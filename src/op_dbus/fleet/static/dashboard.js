// Live updates without reload: every few seconds, ask for the page's main part again (ETag: 304 when unchanged)
// and swap it in. The server renders (and escapes) the HTML; nothing here builds markup from data.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main || !main.dataset.live) return;
  const every = Math.max(1000, parseInt(main.dataset.live, 10) || 3000);
  let etag = null;
  async function poll() {
    // Do not pull the page from under someone using it: typing in a filter or moving through it by keyboard
    // (the swap would lose their place). It catches up once focus leaves the page's main part.
    if (document.hidden || main.contains(document.activeElement)) return;
    const headers = {"X-Live": "1"};
    if (etag) headers["If-None-Match"] = etag;
    try {
      const reply = await fetch(window.location.href, {headers: headers, credentials: "same-origin", cache: "no-store"});
      if (reply.status === 401) { window.location.assign("/ui/login"); return; }
      if (reply.status !== 200) return;
      etag = reply.headers.get("ETag");
      const html = await reply.text();
      if (html !== main.dataset.rendered) {
        main.innerHTML = html;
        main.dataset.rendered = html;
        main.dispatchEvent(new CustomEvent("live-update"));
      }
    } catch (e) {
      // The collector may be restarting: try again at the next tick.
    }
  }
  window.setInterval(poll, every);
})();
