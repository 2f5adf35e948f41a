"""`GET /auth/magic-link?token=…`: the page a magic link in an email opens.

Link scanners (mail filters, chat previews) fetch every URL they see, so the GET only shows a
"Sign in" button and never touches the token; the page's own script POSTs it to the redeem
route when a person presses the button (SECURITY.md 18). The page is a constant: the token is
read by the script from `location.search` and never echoed into the HTML, so nothing the URL
holds can inject markup. The script and style run under a fresh CSP nonce per response; no
other script, style, form, frame or base URL is allowed. Outcomes are written with textContent
(never HTML), including the title of a problem+json answer.
"""

from __future__ import annotations

import base64
import secrets

from aiohttp import web

PATH = "/auth/magic-link"
REDEEM_PATH = "/v1/auth/magic-links/redeem"
# Where the app finds the outcome: the token response (or the pending second-factor step).
SESSION_STORAGE_KEY = "palisade.session"
MFA_STORAGE_KEY = "palisade.mfa"

_NONCE = "__NONCE__"
_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Sign in</title>
<style nonce="__NONCE__">
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; padding: 3rem 1rem; color: #1b1b1f; }
main { max-width: 26rem; margin: 0 auto; }
button { font: inherit; padding: .6rem 1.6rem; border: 0; border-radius: .4rem;
         background: #2f54eb; color: #fff; cursor: pointer; }
button:disabled { background: #9aa5c4; cursor: default; }
</style>
</head>
<body>
<main>
<h1>Sign in</h1>
<p id="status" role="status" aria-live="polite">Press the button to finish signing in.</p>
<button type="button" id="sign-in">Sign in</button>
</main>
<script nonce="__NONCE__">
"use strict";
(function () {
  var status = document.getElementById("status");
  var button = document.getElementById("sign-in");
  var token = new URLSearchParams(window.location.search).get("token");
  // Out of the address bar and the history at once: the token now lives in this variable only.
  window.history.replaceState(null, "", window.location.pathname);
  function show(text) { status.textContent = text; }
  function keep(key, body) {
    try { window.sessionStorage.setItem(key, JSON.stringify(body)); return true; }
    catch (e) { return false; }
  }
  if (!token) {
    button.disabled = true;
    show("This sign-in link is incomplete. Ask for a new one.");
    return;
  }
  button.addEventListener("click", function () {
    button.disabled = true;
    show("Signing you in\u2026");
    fetch("__REDEEM__", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: token}),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer"
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok && body.mfaRequired) {
          keep("__MFA_KEY__", body);
          show("A second factor is needed to finish signing in.");
        } else if (response.ok) {
          show(keep("__SESSION_KEY__", body) ? "You're signed in."
            : "You're signed in, but this browser would not keep the session.");
        } else {
          show(typeof body.title === "string" ? body.title : "Sign-in failed.");
          // A used or expired link stays so; a busy or unavailable server may not.
          button.disabled = !(response.status === 429 || response.status >= 500);
        }
      });
    }).catch(function () {
      button.disabled = false;
      show("The network failed. Try again.");
    });
  });
})();
</script>
</body>
</html>
"""
_PARTS = (
    _TEMPLATE.replace("__REDEEM__", REDEEM_PATH)
    .replace("__SESSION_KEY__", SESSION_STORAGE_KEY)
    .replace("__MFA_KEY__", MFA_STORAGE_KEY)
    .split(_NONCE)
)
_CSP = (
    "default-src 'none'; script-src 'nonce-{0}'; style-src 'nonce-{0}'; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def page_response() -> web.Response:
    """The confirm page, with a nonce of its own (a CSP nonce must never repeat)."""
    nonce = base64.b64encode(secrets.token_bytes(18)).decode("ascii")
    return web.Response(
        text=nonce.join(_PARTS),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": _CSP.format(nonce),
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )
