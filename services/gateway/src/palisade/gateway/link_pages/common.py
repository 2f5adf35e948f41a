"""What every page behind an emailed link shares: the shell, the security headers, the CSP nonce
and the script helpers.

Link scanners (mail filters, chat previews) fetch every URL they see, so such a page's GET only
shows a confirm step and never touches the link's token; the page's own script POSTs it to the
JSON route when a person acts (SECURITY.md 18, 43). Each page is a constant: the token is read by
the script from `location.search` and never echoed into the HTML, so nothing the URL holds can
inject markup, and the server never looks at the query at all. The script and style run under a
fresh CSP nonce per response; no other script, style, form submission, frame or base URL is
allowed, and the only place the script may talk to is the gateway itself. Outcomes are written
with textContent (never HTML), including the words of a problem+json answer.
"""

from __future__ import annotations

import base64
import html
import json
import re
import secrets
from dataclasses import dataclass, field

from aiohttp import web

# Where the app finds a page's outcome: the token response (or the pending second-factor step).
# sessionStorage, not localStorage: it dies with the tab, and other tabs never see it.
SESSION_STORAGE_KEY = "palisade.session"
MFA_STORAGE_KEY = "palisade.mfa"

_NONCE = "__NONCE__"
CSP = (
    "default-src 'none'; script-src 'nonce-{0}'; style-src 'nonce-{0}'; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; padding: 3rem 1rem; color: #1b1b1f; }
main { max-width: 26rem; margin: 0 auto; }
button { font: inherit; padding: .6rem 1.6rem; border: 0; border-radius: .4rem;
         background: #2f54eb; color: #fff; cursor: pointer; }
button:disabled { background: #9aa5c4; cursor: default; }
button.secondary { padding: 0; background: none; color: #2f54eb; text-decoration: underline; }
fieldset { border: 0; margin: 0; padding: 0; }
label { display: block; margin: 1rem 0 .25rem; }
label.check { display: flex; gap: .5rem; align-items: center; }
input[type=text], input[type=password] { font: inherit; width: 100%; box-sizing: border-box;
         padding: .5rem; border: 1px solid #9aa5c4; border-radius: .4rem; }
.actions { margin-top: 1.5rem; }
[hidden] { display: none !important; }
"""

# Run first, inside the page's own function: the token out of the URL, and the helpers every
# page uses. `token` is null when the link is missing one or it was mangled (every Palisade
# link token is a prefix and base64url, well under the bound), so no request is made for it.
_HELPERS = """\
"use strict";
(function () {
  var SESSION_KEY = __SESSION_KEY__;
  var MFA_KEY = __MFA_KEY__;
  var NETWORK_FAILED = "The network failed. Try again.";
  var status = document.getElementById("status");
  var token = new URLSearchParams(window.location.search).get("token");
  if (token !== null && !/^[A-Za-z0-9_-]{1,512}$/.test(token)) { token = null; }
  // Out of the address bar and the history at once: the token now lives in this variable only.
  window.history.replaceState(null, "", window.location.pathname);
  function show(text) { status.textContent = text; }
  function keep(key, body) {
    try { window.sessionStorage.setItem(key, JSON.stringify(body)); return true; }
    catch (e) { return false; }
  }
  function stored(key) {
    try { return JSON.parse(window.sessionStorage.getItem(key) || "null"); }
    catch (e) { return null; }
  }
  function forget(key) {
    try { window.sessionStorage.removeItem(key); } catch (e) { /* nothing kept, then */ }
  }
  // POSTs body as JSON to the gateway (with a bearer, when given); resolves to
  // {status, ok, body}, body being {} when the answer has none (a 204) or is not JSON.
  function post(path, body, bearer) {
    var headers = {"Content-Type": "application/json"};
    if (bearer) { headers.Authorization = "Bearer " + bearer; }
    return fetch(path, {
      method: "POST",
      headers: headers,
      body: JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer"
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (parsed) {
        var answer = parsed !== null && typeof parsed === "object" ? parsed : {};
        return {status: response.status, ok: response.ok, body: answer};
      });
    });
  }
  // The words of a refusal: a problem's title and detail, else the page's own fallback.
  function refusal(answer, fallback) {
    var title = answer.body.title;
    var detail = answer.body.detail;
    if (typeof title !== "string") { return fallback; }
    return typeof detail === "string" && detail !== title ? title + ": " + detail : title;
  }
  // Worth another press: a busy or unavailable server may answer later; a used link never.
  function retryable(answer) { return answer.status === 429 || answer.status >= 500; }
"""
_HELPERS_END = "})();\n"

_SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style nonce="__NONCE__">{style}</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p id="status" role="status" aria-live="polite">{intro}</p>
{body}
</main>
<script nonce="__NONCE__">
{script}</script>
</body>
</html>
"""

_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    # No window that opened the link (a webmail tab) keeps a handle on this one.
    "Cross-Origin-Opener-Policy": "same-origin",
}
# What a page's own markup and script may not hold: anything that would run or style outside
# the nonce, end the script element early, or collide with the nonce placeholder.
_FORBIDDEN_MARKUP = re.compile(r"<script|<style|\son[a-z]+\s*=|javascript:|__NONCE__", re.I)
_FORBIDDEN_SCRIPT = re.compile(r"</script|<!--|innerHTML|outerHTML|document\.write|__NONCE__", re.I)


def js_string(value: str) -> str:
    """value as a JavaScript string literal, for putting constants into a page script."""
    return json.dumps(value)


@dataclass(frozen=True)
class LinkPage:
    """One confirm page: its path, heading, first status line, markup and script.

    `body` is the markup after the status line; `script` runs inside the shared function,
    after the helpers (`token`, `show`, `keep`, `stored`, `forget`, `post`, `refusal`,
    `retryable`, `SESSION_KEY`, `MFA_KEY`, `NETWORK_FAILED`), and may `return` early.
    """

    path: str
    title: str
    intro: str
    body: str
    script: str
    _parts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _FORBIDDEN_MARKUP.search(self.body) or _FORBIDDEN_SCRIPT.search(self.script):
            raise ValueError(f"{self.path}: markup or script outside what the CSP allows")
        helpers = _HELPERS.replace("__SESSION_KEY__", js_string(SESSION_STORAGE_KEY)).replace(
            "__MFA_KEY__", js_string(MFA_STORAGE_KEY)
        )
        page = _SHELL.format(
            title=html.escape(self.title, quote=False),
            intro=html.escape(self.intro, quote=False),
            style=_STYLE,
            body=self.body.strip(),
            script=helpers + self.script + _HELPERS_END,
        )
        parts = tuple(page.split(_NONCE))
        if len(parts) != 3:  # the style's nonce and the script's, nothing else
            raise ValueError(f"{self.path}: the nonce placeholder appears elsewhere")
        object.__setattr__(self, "_parts", parts)

    def response(self) -> web.Response:
        """The page, with a nonce of its own (a CSP nonce must never repeat)."""
        nonce = base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        return web.Response(
            text=nonce.join(self._parts),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": CSP.format(nonce), **_HEADERS},
        )
