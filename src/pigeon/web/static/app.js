// Progressive enhancement for Pigeon's web UI. Every page works without this file; with it,
// messages open in the reading pane without a reload, the inbox updates itself when mail
// arrives (server-sent events), and the SMTP log refreshes. No inline script anywhere: the
// pages' Content-Security-Policy allows only this file.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  document.documentElement.classList.add("js");

  // Forms that ask first (delete).
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  // Tabs of the reading pane: HTML, text, headers, source.
  function setUpTabs(root) {
    const tabs = root.querySelectorAll("[data-tab]");
    if (!tabs.length) return;
    const show = (name) => {
      tabs.forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
      root.querySelectorAll("[data-tab-panel]").forEach((p) => p.classList.toggle("active", p.dataset.tabPanel === name));
    };
    tabs.forEach((t) => t.addEventListener("click", (event) => { event.preventDefault(); show(t.dataset.tab); }));
    show(tabs[0].dataset.tab);
  }

  const inbox = document.getElementById("inbox");
  if (inbox) {
    const list = document.getElementById("message-list");
    const pane = document.getElementById("pane");
    let selected = new URLSearchParams(location.search).get("m") || "";
    setUpTabs(pane);

    async function refreshList() {
      const params = new URLSearchParams(location.search);
      if (selected) params.set("m", selected);
      const response = await fetch(inbox.dataset.list + "?" + params.toString(), { credentials: "same-origin" });
      if (!response.ok) return;
      const known = new Set([...list.querySelectorAll("li[data-id]")].map((li) => li.dataset.id));
      list.innerHTML = await response.text();
      list.querySelectorAll("li[data-id]").forEach((li) => { if (!known.has(li.dataset.id)) li.classList.add("fresh"); });
      inbox.classList.add("live");
    }

    async function open(id) {
      const response = await fetch(inbox.dataset.pane + encodeURIComponent(id), { credentials: "same-origin" });
      if (!response.ok) return;
      pane.innerHTML = await response.text();
      setUpTabs(pane);
      selected = id;
      list.querySelectorAll("li[data-id]").forEach((li) => li.classList.toggle("selected", li.dataset.id === id));
      const params = new URLSearchParams(location.search);
      params.set("m", id);
      history.replaceState(null, "", location.pathname + "?" + params.toString());
      const item = list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
      if (item && item.classList.contains("unread")) {
        const marked = await fetch(inbox.dataset.api + encodeURIComponent(id) + "/read", {
          method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf() },
        });
        if (marked.ok) item.classList.remove("unread");
      }
    }

    list.addEventListener("click", (event) => {
      const link = event.target.closest("a.message-link");
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      open(link.dataset.id);
    });

    if (window.EventSource) {
      // The first event comes at once: refreshing then also catches mail that arrived
      // between this page's rendering and the stream's start.
      const events = new EventSource(inbox.dataset.events);
      events.addEventListener("mailbox", () => refreshList());
      // SEND/SOML/SAML (RFC 821): a message for this user's terminal, shown, not filed.
      events.addEventListener("terminal", (event) => {
        const note = JSON.parse(event.data);
        const box = document.createElement("div");
        box.className = "terminal-note";
        const head = document.createElement("strong");
        head.textContent = `Message from ${note.sender}${note.subject ? ": " + note.subject : ""}`;
        const body = document.createElement("pre");
        body.textContent = note.text;
        const close = document.createElement("button");
        close.textContent = "Dismiss";
        close.addEventListener("click", () => box.remove());
        box.append(head, body, close);
        pane.prepend(box);
      });
      events.addEventListener("error", () => inbox.classList.remove("live"));
    }
  }

  const sessions = document.getElementById("sessions");
  if (sessions) {
    setInterval(async () => {
      const openOnes = new Set([...sessions.querySelectorAll("details[open] summary")].map((s) => s.textContent));
      const response = await fetch(sessions.dataset.list, { credentials: "same-origin" });
      if (!response.ok) return;
      sessions.innerHTML = await response.text();
      sessions.querySelectorAll("details summary").forEach((s) => { if (openOnes.has(s.textContent)) s.parentElement.open = true; });
    }, 2000);
  }
})();
