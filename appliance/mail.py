"""Mail to people: invitation and password reset links, through the SMTP server in `[smtp]`.

Sent with the standard library's smtplib, synchronously: the callers are API handlers that run in
a thread of their own. Without `smtp.host` nothing is sent and the caller shows the link instead.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage

from .settings import Smtp

log = logging.getLogger("flowfuse.mail")


class MailError(Exception):
    """The SMTP server could not be reached or refused the message; the text says which."""


def enabled(smtp: Smtp) -> bool:
    return bool(smtp.host)


def send(smtp: Smtp, to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = smtp.sender, to, subject
    message.set_content(body)
    try:
        if smtp.security == "tls":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_s,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password)
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("mail to %s not sent: %s", to, exc)
        raise MailError(f"the mail to {to} could not be sent ({type(exc).__name__}: {exc}); "
                        "check [smtp] in flowfuse.toml, or copy the link instead") from None


def invitation(smtp: Smtp, to: str, tenant: str, role: str, link: str, inviter: str) -> None:
    send(smtp, to, f"You are invited to {tenant} on FlowFuse",
         f"{inviter} invited you to join the workspace {tenant} on FlowFuse as {role}.\n\n"
         f"Open this link to accept (it works once, for 7 days):\n{link}\n")


def password_reset(smtp: Smtp, to: str, link: str) -> None:
    send(smtp, to, "Reset your FlowFuse password",
         f"Open this link to choose a new FlowFuse password (it works once, for an hour):\n{link}\n\n"
         "If you did not ask for this, ignore this mail; your password stays as it is.\n")
