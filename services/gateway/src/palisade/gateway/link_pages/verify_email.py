"""`GET /auth/verify-email?token=…`: the page an email-verification link opens.

The same page confirms a new address after an email change: either way the press POSTs the
token, and a 204 means the address is confirmed (after a change, it is now the login address).
"""

from __future__ import annotations

from palisade.gateway.link_pages.common import LinkPage, js_string

PATH = "/auth/verify-email"
CONFIRM_PATH = "/v1/auth/email-verification/confirm"

PAGE = LinkPage(
    path=PATH,
    title="Confirm your email address",
    intro="Press the button to confirm this email address.",
    body='<button type="button" id="confirm">Confirm my email address</button>',
    script="""\
  var button = document.getElementById("confirm");
  if (!token) {
    button.disabled = true;
    show("This confirmation link is incomplete. Ask for a new one.");
    return;
  }
  button.addEventListener("click", function () {
    button.disabled = true;
    show("Confirming\\u2026");
    post(__CONFIRM__, {token: token}).then(function (answer) {
      if (answer.ok) {
        show("Your email address is confirmed.");
      } else {
        show(refusal(answer, "The address could not be confirmed."));
        button.disabled = !retryable(answer);
      }
    }).catch(function () {
      button.disabled = false;
      show(NETWORK_FAILED);
    });
  });
""".replace("__CONFIRM__", js_string(CONFIRM_PATH)),
)
