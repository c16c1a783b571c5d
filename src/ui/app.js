// seedq dashboard: the live overview (server-sent events), actions with the admin token, and
// the gallery's player. Plain script, no build step; the CSP allows only this file.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Overview: the server re-renders the live part and sends it whenever it changed. The HTML
  // is the server's own, with all user text escaped, so it can replace the old part as is.
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (live && window.EventSource) {
    const es = new EventSource(live.dataset.src);
    es.addEventListener("live", (ev) => {
      live.innerHTML = ev.data;
      if (status) status.textContent = "updated " + new Date().toLocaleTimeString();
    });
    es.onerror = () => { if (status) status.textContent = "reconnecting…"; };
  }

  // Actions: POST with the token in a header (a cross-site page cannot send one without a
  // CORS preflight, which the server never allows). The token stays in this tab only.
  const actions = document.querySelector(".actions");
  if (actions) {
    const token = document.getElementById("token");
    const out = document.getElementById("action-result");
    token.value = sessionStorage.getItem("seedq-token") || "";
    actions.querySelectorAll("button[data-action]").forEach((b) => {
      b.addEventListener("click", async () => {
        sessionStorage.setItem("seedq-token", token.value);
        let url = "/ui/jobs/" + encodeURIComponent(actions.dataset.job) + "/" + b.dataset.action;
        if (b.dataset.action === "adopt") {
          url += "?task=" + encodeURIComponent(document.getElementById("adopt-task").value);
        }
        const headers = {};
        if (token.value) headers["X-Seedq-Token"] = token.value;
        try {
          const r = await fetch(url, { method: "POST", headers, credentials: "same-origin" });
          out.textContent = r.status + " " + (await r.text());
          out.dataset.status = String(r.status);
          if (r.ok) setTimeout(() => location.reload(), 800);
        } catch (e) {
          out.textContent = "failed: " + e;
          out.dataset.status = "error";
        }
      });
    });
  }

  // Overview: pause / resume a model or batch. The buttons live in the part server-sent events
  // replace, so one listener on the document serves the old and the new ones.
  const ovToken = document.getElementById("ov-token");
  if (ovToken) {
    const out = document.getElementById("ov-result");
    ovToken.value = sessionStorage.getItem("seedq-token") || "";
    document.addEventListener("click", async (ev) => {
      const b = ev.target.closest("button[data-op]");
      if (!b) return;
      sessionStorage.setItem("seedq-token", ovToken.value);
      const url = "/ui/" + b.dataset.op + "?kind=" + encodeURIComponent(b.dataset.kind) +
        "&name=" + encodeURIComponent(b.dataset.name);
      const headers = {};
      if (ovToken.value) headers["X-Seedq-Token"] = ovToken.value;
      try {
        const r = await fetch(url, { method: "POST", headers, credentials: "same-origin" });
        out.textContent = r.status + " " + (await r.text());
        out.dataset.status = String(r.status);
      } catch (e) {
        out.textContent = "failed: " + e;
        out.dataset.status = "error";
      }
    });
  }

  // Gallery: a click on a last frame plays its clip.
  const dialog = document.getElementById("player");
  if (dialog) {
    const video = document.getElementById("player-video");
    document.querySelectorAll("button.play").forEach((b) => {
      b.addEventListener("click", () => {
        video.src = b.dataset.video;
        dialog.showModal();
        video.play().catch(() => {});
      });
    });
    dialog.addEventListener("close", () => { video.pause(); });
  }
});
