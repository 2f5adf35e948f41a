"""`GET /auth/invitation?token=…`: the page a team invitation's link opens.

A new person gives a name and a password (typed twice, compared here); someone who already has
an account ticks "I already have an account" instead, and the page sends the bearer of the
session this tab keeps (what the magic-link page stored under `palisade.session`). Either way
the submit POSTs `{token, name?, password?}` to the accept route, and the answer, a token
response in the inviting workspace, is kept where the magic-link page keeps one. As on the reset
page, the inputs have no `name` and the password is never put in the URL or in storage.
"""

from __future__ import annotations

from palisade.gateway.link_pages.common import LinkPage, js_string

PATH = "/auth/invitation"
ACCEPT_PATH = "/v1/auth/invitations/accept"

_INTRO = "You're invited to join a workspace. Choose your name and a password."

PAGE = LinkPage(
    path=PATH,
    title="Accept the invitation",
    intro=_INTRO,
    body="""
<form id="accept" method="post">
<fieldset id="fields">
<div id="new-person">
<label for="person-name">Your name</label>
<input type="text" id="person-name" autocomplete="name" maxlength="200" required>
<label for="new-password">Password</label>
<input type="password" id="new-password" autocomplete="new-password" required>
<label for="repeat-password">The same password again</label>
<input type="password" id="repeat-password" autocomplete="new-password" required>
</div>
<label class="check"><input type="checkbox" id="existing"> I already have an account</label>
<div class="actions"><button type="submit" id="join">Accept the invitation</button></div>
</fieldset>
</form>
""",
    script="""\
  var INTRO = __INTRO__;
  var form = document.getElementById("accept");
  var fields = document.getElementById("fields");
  var person = document.getElementById("new-person");
  var personName = document.getElementById("person-name");
  var password = document.getElementById("new-password");
  var repeat = document.getElementById("repeat-password");
  var existing = document.getElementById("existing");
  var NOT_SIGNED_IN = "You're not signed in here. Sign in to your account in this browser tab, "
    + "then open the invitation link again in it.";
  if (!token) {
    fields.disabled = true;
    show("This invitation link is incomplete. Ask for a new invitation.");
    return;
  }
  // The access token of the session this tab keeps, if there is one.
  function bearer() {
    var session = stored(SESSION_KEY);
    return session !== null && typeof session === "object"
      && typeof session.accessToken === "string" && session.accessToken ? session.accessToken
      : null;
  }
  existing.addEventListener("change", function () {
    // Hidden fields must not be required, or the browser refuses to submit the form.
    person.hidden = existing.checked;
    personName.required = password.required = repeat.required = !existing.checked;
    if (!existing.checked) {
      show(INTRO);
    } else {
      show(bearer() ? "You'll join with the account you're signed in to." : NOT_SIGNED_IN);
    }
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();  // sent by fetch below, never by the browser
    var body = {token: token};
    var access = null;
    if (existing.checked) {
      access = bearer();
      if (!access) {
        show(NOT_SIGNED_IN);
        return;
      }
    } else {
      if (password.value !== repeat.value) {
        show("The two passwords differ. Type the same password twice.");
        repeat.focus();
        return;
      }
      body.name = personName.value.trim();
      body.password = password.value;
    }
    fields.disabled = true;
    show("Accepting the invitation\\u2026");
    post(__ACCEPT__, body, access).then(function (answer) {
      if (answer.ok) {
        password.value = "";
        repeat.value = "";
        show(keep(SESSION_KEY, answer.body) ? "You've joined the workspace and you're signed in."
          : "You've joined the workspace, but this browser would not keep the session: "
            + "sign in again.");
      } else {
        fields.disabled = false;
        show(refusal(answer, "The invitation could not be accepted."));
      }
    }).catch(function () {
      fields.disabled = false;
      show(NETWORK_FAILED);
    });
  });
""".replace("__ACCEPT__", js_string(ACCEPT_PATH)).replace("__INTRO__", js_string(_INTRO)),
)
