"""`GET /auth/magic-link?token=…`: the page a magic link in an email opens.

It shows a "Sign in" button; the press POSTs the token to the redeem route, and the answer (the
token response, or the pending second-factor step) is kept in sessionStorage for the app.
"""

from __future__ import annotations

from palisade.gateway.link_pages.common import LinkPage, js_string

PATH = "/auth/magic-link"
REDEEM_PATH = "/v1/auth/magic-links/redeem"

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
  button.addEventListener("click", function () {
    button.disabled = true;
    show("Signing you in\\u2026");
    post(__REDEEM__, {token: token}).then(function (answer) {
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
""".replace("__REDEEM__", js_string(REDEEM_PATH)),
)
