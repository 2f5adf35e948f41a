"""`GET /auth/reset-password?token=…`: the page a password-reset link opens.

A form for the new password (typed twice, compared here before anything is sent). Its submit
POSTs `{token, newPassword}`; when the account has a second factor the answer is 200
`mfaRequired` and the page asks for a code from the authenticator app (or a backup code), then
POSTs again with `code` (or `backupCode`). The password lives in the input fields only: never
in the URL (the inputs have no `name`, so even a native submission would carry nothing, and the
CSP's `form-action 'none'` refuses one anyway) and never in storage.
"""

from __future__ import annotations

from palisade.gateway.link_pages.common import LinkPage, js_string

PATH = "/auth/reset-password"
CONFIRM_PATH = "/v1/auth/password-reset/confirm"

PAGE = LinkPage(
    path=PATH,
    title="Choose a new password",
    intro="Type your new password twice.",
    body="""
<form id="reset" method="post">
<fieldset id="fields">
<label for="new-password">New password</label>
<input type="password" id="new-password" autocomplete="new-password" required>
<label for="repeat-password">The same password again</label>
<input type="password" id="repeat-password" autocomplete="new-password" required>
<div id="second-factor" hidden>
<label for="code" id="code-label">Code from your authenticator app</label>
<input type="text" id="code" autocomplete="one-time-code" inputmode="numeric" spellcheck="false">
<button type="button" class="secondary" id="use-backup">Use a backup code instead</button>
</div>
<div class="actions"><button type="submit" id="change">Change my password</button></div>
</fieldset>
</form>
""",
    script="""\
  var form = document.getElementById("reset");
  var fields = document.getElementById("fields");
  var password = document.getElementById("new-password");
  var repeat = document.getElementById("repeat-password");
  var factor = document.getElementById("second-factor");
  var code = document.getElementById("code");
  var codeLabel = document.getElementById("code-label");
  var toggle = document.getElementById("use-backup");
  var backup = false;  // what the code field holds: an app's code, or a backup code
  if (!token) {
    fields.disabled = true;
    show("This reset link is incomplete. Ask for a new one.");
    return;
  }
  toggle.addEventListener("click", function () {
    backup = !backup;
    codeLabel.textContent = backup ? "Backup code" : "Code from your authenticator app";
    toggle.textContent = backup ? "Use a code from the app instead" : "Use a backup code instead";
    code.setAttribute("autocomplete", backup ? "off" : "one-time-code");
    code.setAttribute("inputmode", backup ? "text" : "numeric");
    code.value = "";
    code.focus();
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();  // sent by fetch below, never by the browser
    if (password.value !== repeat.value) {
      show("The two passwords differ. Type the same password twice.");
      repeat.focus();
      return;
    }
    var body = {token: token, newPassword: password.value};
    if (!factor.hidden) {
      var second = code.value.trim();
      if (!second) {
        show(backup ? "Enter one of your backup codes." : "Enter the code from your app.");
        code.focus();
        return;
      }
      if (backup) { body.backupCode = second; } else { body.code = second; }
    }
    fields.disabled = true;
    show("Changing your password\\u2026");
    post(__CONFIRM__, body).then(function (answer) {
      if (answer.ok && answer.body.mfaRequired) {
        factor.hidden = false;
        fields.disabled = false;
        code.focus();
        show("Your account has a second factor: enter the code from your authenticator app, "
          + "or use a backup code.");
      } else if (answer.ok) {
        password.value = "";
        repeat.value = "";
        code.value = "";
        factor.hidden = true;
        // Every session ended with the reset: whatever this tab kept is dead.
        forget(SESSION_KEY);
        forget(MFA_KEY);
        show("Your password was changed; sign in again.");
      } else {
        // A refused password or code can be corrected and sent again; a dead link says so.
        fields.disabled = false;
        show(refusal(answer, "The password could not be changed."));
      }
    }).catch(function () {
      fields.disabled = false;
      show(NETWORK_FAILED);
    });
  });
""".replace("__CONFIRM__", js_string(CONFIRM_PATH)),
)
