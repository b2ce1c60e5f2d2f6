/* Magistrate's console behaviour, served from our own static files (CSP: script-src 'self').

   One feedback mechanism for every htmx request:
   - every 4xx/5xx answer (and a server that cannot be reached) shows a toast carrying the
     server's own sentence, read from the error page or the JSON body;
   - plain POST forms are boosted through htmx, so a refused form keeps what was typed and
     shows the sentence, and a success follows the server's redirect (Post/Redirect/Get);
   - an element with data-confirm asks first in a <dialog>; with data-confirm-phrase the
     person must type that phrase (irreversible actions).
*/
(function () {
  "use strict";

  var UNREACHABLE = "Magistrate could not be reached. Check the connection and try again.";

  function toast(message, kind) {
    var region = document.getElementById("toasts");
    if (!region) { return; }
    var box = document.createElement("div");
    box.className = "toast " + (kind || "error");
    box.setAttribute("role", kind === "notice" ? "status" : "alert");
    box.setAttribute("data-testid", "toast");
    var text = document.createElement("p");
    text.textContent = message;
    box.appendChild(text);
    var close = document.createElement("button");
    close.type = "button";
    close.className = "link";
    close.textContent = "Dismiss";
    close.addEventListener("click", function () { box.remove(); });
    box.appendChild(close);
    region.appendChild(box);
    if (kind === "notice") { setTimeout(function () { box.remove(); }, 8000); }
  }

  function sentenceOf(xhr) {
    var type = xhr.getResponseHeader("Content-Type") || "";
    var body = xhr.responseText || "";
    if (type.indexOf("json") !== -1) {
      try {
        var data = JSON.parse(body);
        if (data && typeof data.error === "string") { return data.error; }
      } catch (ignored) { /* not JSON after all */ }
    }
    if (body) {
      var doc = new DOMParser().parseFromString(body, "text/html");
      var found = doc.querySelector("[data-error-message]") ||
        doc.querySelector(".error-page p") || doc.querySelector("p.error[role=alert]") ||
        doc.querySelector("[role=alert]");
      if (found && found.textContent.trim()) { return found.textContent.trim(); }
    }
    return "The server answered " + xhr.status + (xhr.statusText ? " (" + xhr.statusText + ")" : "") +
      ". Try again, or reload the page.";
  }

  document.addEventListener("htmx:responseError", function (event) {
    toast(sentenceOf(event.detail.xhr));
  });
  document.addEventListener("htmx:sendError", function () { toast(UNREACHABLE); });
  document.addEventListener("htmx:timeout", function () { toast(UNREACHABLE); });

  /* ---- confirmation ------------------------------------------------------------------ */

  var proceed = null;

  function ask(holder, go) {
    var dialog = document.getElementById("confirm-dialog");
    if (!dialog || typeof dialog.showModal !== "function") { go(); return; }
    var phrase = holder.getAttribute("data-confirm-phrase") || "";
    var input = document.getElementById("confirm-input");
    var label = document.getElementById("confirm-phrase-label");
    var button = document.getElementById("confirm-go");
    document.getElementById("confirm-message").textContent =
      holder.getAttribute("data-confirm") || "Are you sure?";
    document.getElementById("confirm-phrase").textContent = phrase;
    button.textContent = holder.getAttribute("data-confirm-button") || "Confirm";
    input.value = "";
    label.hidden = !phrase;
    button.disabled = !!phrase;  // enabled once the phrase is typed exactly (the input handler)
    proceed = go;
    dialog.returnValue = "";
    dialog.showModal();
    (phrase ? input : document.getElementById("confirm-cancel")).focus();
  }

  document.addEventListener("input", function (event) {
    if (event.target && event.target.id === "confirm-input") {
      var phrase = document.getElementById("confirm-phrase").textContent;
      document.getElementById("confirm-go").disabled = event.target.value !== phrase;
    }
  });

  document.addEventListener("close", function (event) {
    if (!event.target || event.target.id !== "confirm-dialog") { return; }
    var go = proceed;
    proceed = null;
    if (event.target.returnValue === "confirm" && go) { go(); }
  }, true);

  // plain forms (not htmx-driven): hold the submit until the dialog says yes
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-confirm")) { return; }
    if (form.hasAttribute("hx-post") || form.hasAttribute("hx-boost")) { return; }  // htmx:confirm
    if (form.getAttribute("data-confirmed") === "yes") { form.removeAttribute("data-confirmed"); return; }
    event.preventDefault();
    var submitter = event.submitter;
    ask(form, function () {
      form.setAttribute("data-confirmed", "yes");
      form.requestSubmit(submitter || undefined);
    });
  }, true);

  // htmx-driven requests (boosted forms included): htmx asks before every request
  document.addEventListener("htmx:confirm", function (event) {
    var elt = event.detail.elt;
    var holder = elt && elt.closest ? elt.closest("[data-confirm]") : null;
    if (!holder) { return; }
    event.preventDefault();
    ask(holder, function () { event.detail.issueRequest(true); });
  });

  /* ---- boosted forms and the address bar --------------------------------------------- */

  var BOOSTED = ["/tenants", "/users", "/jobs"].map(function (prefix) {
    return "main form[method=post][action^='" + prefix + "']:not([hx-post]):not([hx-boost]):not([data-no-boost])";
  }).join(", ");

  function boostForms(root) {
    // the tenant, user and job pages; sign-in and account forms rotate the session (and so
    // the CSRF token on <body>), so they stay full page loads
    var forms = (root || document).querySelectorAll(BOOSTED);
    for (var i = 0; i < forms.length; i++) {
      forms[i].setAttribute("hx-boost", "true");
      if (window.htmx) { window.htmx.process(forms[i]); }
    }
  }

  function fixAddress() {
    // a page rendered by a POST (a one-time secret, a refusal) names the address it stands for
    var canonical = document.getElementById("magistrate-url");
    if (canonical && window.history && window.history.replaceState) {
      window.history.replaceState(window.history.state, "", canonical.getAttribute("data-url"));
    }
  }

  function settle() {
    fixAddress();
    boostForms(document);
  }

  document.addEventListener("DOMContentLoaded", settle);
  document.addEventListener("htmx:afterSettle", settle);
  document.addEventListener("htmx:pushedIntoHistory", fixAddress);
  document.addEventListener("htmx:historyRestore", function () { boostForms(document); });
}());
