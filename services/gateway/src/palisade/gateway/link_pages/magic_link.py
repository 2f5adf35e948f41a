"""`GET /auth/magic-link?token=…`: the page a magic link in an email opens.

It shows a "Sign in" button; the press POSTs the token to the redeem route, and the answer (the
token response, or the pending second-factor step) is kept in sessionStorage for the app.

PKCE-bound links (requested with a `codeChallenge`): an app on this origin that asked for the link
keeps its verifier in localStorage under VERIFIER_STORAGE_KEY (localStorage, because the email
opens the link in a new tab); the page sends it with the token and removes it once the link is
used up (a success, or a final refusal). Opened anywhere else, a bound link signs nobody in:
that is what binding is for. Apps that open links themselves (a deep link into a native app)
keep the verifier their own way and call the redeem route directly.
"""

from __future__ import annotations

from palisade.gateway.link_pages.common import LinkPage, js_string

PATH = "/auth/magic-link"
REDEEM_PATH = "/v1/auth/magic-links/redeem"
VERIFIER_STORAGE_KEY = "palisade.magicLink.codeVerifier"

PAGE = LinkPage(
    path=PATH,
    title="Sign in",
    intro="Press the button to finish signing in.",
    body='<button type="button" id="sign-in">Sign in</button>',
    script="""\
  var button = document.getElementById("sign-in");
  if (!token) {
    button.disabled = true;
    show("This sign-in link is incomplete. Ask for a new one.");
    return;
  }
  function verifier() {
    try { return window.localStorage.getItem(__VERIFIER_KEY__); } catch (e) { return null; }
  }
  function forgetVerifier() {
    try { window.localStorage.removeItem(__VERIFIER_KEY__); } catch (e) { /* nothing kept */ }
  }
  button.addEventListener("click", function () {
    button.disabled = true;
    show("Signing you in\\u2026");
    var body = {token: token};
    var codeVerifier = verifier();
    if (codeVerifier) { body.codeVerifier = codeVerifier; }
    post(__REDEEM__, body).then(function (answer) {
      if (answer.ok || !retryable(answer)) { forgetVerifier(); }
      if (answer.ok && answer.body.mfaRequired) {
        keep(MFA_KEY, answer.body);
        show("A second factor is needed to finish signing in.");
      } else if (answer.ok) {
        show(keep(SESSION_KEY, answer.body) ? "You're signed in."
          : "You're signed in, but this browser would not keep the session.");
      } else {
        show(refusal(answer, "Sign-in failed."));
        button.disabled = !retryable(answer);
      }
    }).catch(function () {
      button.disabled = false;
      show(NETWORK_FAILED);
    });
  });
""".replace("__REDEEM__", js_string(REDEEM_PATH)).replace(
        "__VERIFIER_KEY__", js_string(VERIFIER_STORAGE_KEY)
    ),
)
