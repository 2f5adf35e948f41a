"""`GET /auth/not-me?token=…`: the page the "this wasn't me" link of a new-sign-in alert opens.

The press POSTs the token and every session of the account ends. Until the JSON route is
served, the gateway answers 404 (no such route) or 501: the page says the link cannot be used
yet and points at the way that always works, a password reset.
"""

from __future__ import annotations

from palisade.gateway.link_pages.common import LinkPage, js_string

PATH = "/auth/not-me"
NOT_ME_PATH = "/v1/auth/not-me"

PAGE = LinkPage(
    path=PATH,
    title="Sign out everywhere",
    intro=(
        "If the sign-in we emailed you about wasn't you, press the button: every session of your"
        " account ends, on every device."
    ),
    body='<button type="button" id="not-me">This wasn\'t me: sign out everywhere</button>',
    script="""\
  var button = document.getElementById("not-me");
  if (!token) {
    button.disabled = true;
    show("This link is incomplete. To protect your account, reset your password.");
    return;
  }
  button.addEventListener("click", function () {
    button.disabled = true;
    show("Signing out everywhere\\u2026");
    post(__NOT_ME__, {token: token}).then(function (answer) {
      if (answer.ok) {
        forget(SESSION_KEY);
        forget(MFA_KEY);
        show("Every session of your account has ended. If someone else signed in, they may "
          + "know your password: reset it now.");
      } else if ((answer.status === 404 && answer.body.code === "not_found")
          || answer.status === 501) {
        // The route is not served here (yet): nothing was done, and pressing again won't help.
        show("This link can't be used here. To protect your account, reset your password: "
          + "that ends every session too.");
      } else {
        show(refusal(answer, "Signing out everywhere failed."));
        button.disabled = !retryable(answer);
      }
    }).catch(function () {
      button.disabled = false;
      show(NETWORK_FAILED);
    });
  });
""".replace("__NOT_ME__", js_string(NOT_ME_PATH)),
)
