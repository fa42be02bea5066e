// Keeps the live parts of a dashboard page fresh: every element with data-refresh-ms is fetched again from the
// same address (the server answers only that part when it sees the X-Dashboard-Fragment header) and swapped in,
// until the new content says it is final (data-final="true": a finished job or batch). No framework, no build.
"use strict";

function refresh(element) {
  const period = Number(element.dataset.refreshMs) || 1000;
  const tick = async () => {
    try {
      const response = await fetch(window.location.href, {
        headers: { "X-Dashboard-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.redirected || response.status === 401) {
        window.location.reload(); // signed out elsewhere: show the sign-in page
        return;
      }
      if (response.ok) {
        element.innerHTML = await response.text();
        element.dataset.refreshedAt = String(Date.now());
      }
    } catch (error) {
      // The scheduler is restarting or the network blinked: try again at the next tick.
    }
    if (!element.querySelector('[data-final="true"]')) {
      window.setTimeout(tick, period);
    }
  };
  if (!element.querySelector('[data-final="true"]')) {
    window.setTimeout(tick, period);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh-ms]").forEach(refresh);
});
