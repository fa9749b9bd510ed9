"""SendGrid v3 Mail Send (https://www.twilio.com/docs/sendgrid/api-reference/mail-send):
`POST /v3/mail/send` with `Authorization: Bearer <key>` and a JSON body; success is 202 with an
empty body and `X-Message-Id`; errors are `{"errors": [{"message", "field", "help"}]}`."""

from __future__ import annotations

import itertools

from . import FakeService, Reply, Request

SUBJECT_REQUIRED = ("The subject is required. You can get around this requirement if you use a template with a "
                    "subject defined or if every personalization has a subject defined.")


def errors(status: int, *found: tuple[str, str | None]) -> Reply:
    return Reply(status, {"errors": [{"message": m, "field": f, "help": None} for m, f in found]})


class FakeSendGrid(FakeService):
    def __init__(self, key: str = "SG.fake-key") -> None:
        self.key = key
        self.sent: list[dict] = []
        self._ids = itertools.count(1)
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.path != "/v3/mail/send" or request.method != "POST":
            return errors(404, ("not found", None))
        if request.bearer != self.key:
            return errors(401, ("The provided authorization grant is invalid, expired, or revoked", None))
        mail = request.json()
        found = []
        if not mail.get("personalizations") or not all(p.get("to") for p in mail["personalizations"]):
            found.append(("The personalizations field is required and must have at least one personalization.",
                          "personalizations"))
        if not (mail.get("from") or {}).get("email"):
            found.append(("The from object must be provided for every email send.", "from"))
        if not mail.get("template_id"):
            if not mail.get("subject") and not any(p.get("subject") for p in mail.get("personalizations", [])):
                found.append((SUBJECT_REQUIRED, "subject"))
            if not mail.get("content"):
                found.append(("Unless a valid template_id is provided, the content parameter is required.",
                              "content"))
        elif not mail["template_id"].startswith("d-"):
            found.append(("The template_id must be a valid GUID.", "template_id"))
        if found:
            return errors(400, *found)
        self.sent.append(mail)
        return Reply(202, None, {"X-Message-Id": f"msg-{next(self._ids)}"})
