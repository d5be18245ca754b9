"""Notification e-mail over SMTP, with the standard library's `smtplib`.

Each `send` opens one connection: plain (`security="none"`), upgraded with STARTTLS (`"starttls"`, usually port
587) or TLS from the first byte (`"tls"`, usually port 465), logs in when a username is configured, hands the
message over and says goodbye. The message carries `X-Connector-Job: <job id>` and a `Message-ID` made from the
job id alone, so a message sent again after a lost answer has the same id and is recognisable as a resend.

How failures map onto `connector.errors` (result codes in brackets):

- the server cannot be reached: connection refused, unknown host, no connection in time, TLS handshake failed
  [SMTP_UNREACHABLE, `NetworkError`]: transient.
- a 4xx reply at any step (greylisting, "try again later", 421 closing), a dropped connection or a timeout
  before the message was handed over [SMTP_UNAVAILABLE, `Unavailable`]: transient.
- a dropped connection or a timeout after the DATA command [SMTP_OUTCOME_UNKNOWN, `OutcomeUnknown`]: transient,
  and the server may already have the message; its resend carries the same Message-ID.
- the login refused with a 5xx, or no way to log in on this connection [SMTP_AUTH_FAILED, `AuthError`]. A 4xx
  answer to the login (454, a temporary failure) is SMTP_UNAVAILABLE.
- recipients refused [SMTP_RECIPIENTS_REFUSED, `Rejected`]: every recipient refused with 5xx (when one of them
  was a 4xx, that is SMTP_UNAVAILABLE: a retry may get through), or only some recipients refused, with any code:
  the others did get the message, the error names both, and it is not retried so that they do not get it twice.
- any other 5xx reply (sender refused, message refused), or an extension the configuration needs that the server
  lacks (STARTTLS, SMTPUTF8) [SMTP_REJECTED, `Rejected`].
- no recipients, a header value with a line break, a job id unfit for a header [INVALID_INPUT, `InvalidInput`]:
  nothing is sent.

The password is only handed to `smtplib.SMTP.login`; it is not kept in `repr`, and server replies quoted in
errors have it masked should a server echo it.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any, Literal, get_args

from connector import errors
from connector.http import Redactor

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "tls"]

JOB_HEADER = "X-Connector-Job"

_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no space, no CR/LF that could split a header
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class _SMTP(smtplib.SMTP):
    """Remembers whether the DATA command went out: from then on a lost connection may have delivered the mail."""

    handed_over = False

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.handed_over = True
        return super().data(msg)


class _SMTPS(_SMTP, smtplib.SMTP_SSL):
    pass


def message_id(ref: str, sender: str) -> str:
    """The Message-ID of the notification for job `ref`: the same on every resend."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "connector.invalid"
    return f"<connector-job-{_ID_UNSAFE.sub('_', ref)}@{domain}>"


class MailClient:
    """Sends notification mail through one SMTP server. Thread-safe: every `send` has its own connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: Security,
        username: str | None,
        password: str | None,
        sender: str,
        timeout: float = 10,
    ) -> None:
        if security not in get_args(Security):
            raise ValueError(f"SMTP security is {security!r}; it must be one of none, starttls or tls.")
        if "@" not in parseaddr(sender)[1]:
            raise ValueError(f"The mail sender {sender!r} is not an e-mail address.")
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password or ""
        self.sender = sender
        self.timeout = timeout
        self._redactor = Redactor([self._password])

    def __repr__(self) -> str:
        return (
            f"MailClient(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, sender={self.sender!r})"
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def build(self, to: list[str], subject: str, body: str, *, ref: str) -> EmailMessage:
        """The message `send` would send; InvalidInput if it cannot be made."""
        if not to:
            raise errors.InvalidInput("The notification has no recipients; at least one e-mail address is needed.")
        for address in to:
            if "@" not in parseaddr(address)[1]:
                raise errors.InvalidInput(f"Recipient {address!r} is not an e-mail address.")
        if not _HEADER_SAFE.fullmatch(ref):
            raise errors.InvalidInput(
                f"Job id {ref!r} cannot be sent in the {JOB_HEADER} header: it must be printable ASCII without spaces."
            )
        message = EmailMessage()
        try:
            message["From"] = self.sender
            message["To"] = ", ".join(to)
            message["Subject"] = subject
            message["Date"] = formatdate(localtime=True)
            message["Message-ID"] = message_id(ref, self.sender)
            message[JOB_HEADER] = ref
            message.set_content(body)
        except ValueError as exc:
            raise errors.InvalidInput(f"The notification for job {ref} cannot be built: {exc}.") from exc
        return message

    def send(self, to: list[str], subject: str, body: str, *, ref: str) -> None:
        """Send one notification for job `ref` to every address in `to`."""
        message = self.build(to, subject, body, ref=ref)
        stage = "connect"
        smtp: _SMTP | None = None
        done = False
        try:
            # Connects at once; smtplib closes the socket itself when this fails.
            if self.security == "tls":
                smtp = _SMTPS(self.host, self.port, timeout=self.timeout, context=ssl.create_default_context())
            else:
                smtp = _SMTP(self.host, self.port, timeout=self.timeout)
            stage = "hello"
            smtp.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                stage = "starttls"
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.username:
                stage = "login"
                smtp.login(self.username, self._password)
            stage = "send"
            refused = smtp.send_message(message)
            done = True
        except OSError as exc:  # smtplib's exceptions included
            raise self._translate(exc, stage, handed_over=bool(smtp and smtp.handed_over)) from exc
        finally:
            if smtp is not None:
                _close(smtp, polite=done)
        if refused:
            raise self._partly_refused(refused, to, ref)
        log.info("Notification for job %s sent to %d recipient(s) through %s", ref, len(to), self.where)

    # --- errors -----------------------------------------------------------------------------------------------

    def _translate(self, exc: OSError, stage: str, *, handed_over: bool) -> errors.ConnectorError:
        # smtplib's exceptions are OSErrors too: its own come first, then the socket's and the TLS layer's.
        where = self.where
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return self._refused(exc.recipients)
        if isinstance(exc, smtplib.SMTPResponseException):
            code, reply = exc.smtp_code, self._reply(exc.smtp_error)
            # Only a 5xx is a final no; 4xx says "later", and anything else is a server out of step with us.
            if not 500 <= code < 600:
                return errors.Unavailable(
                    f"The mail server {where} answered {code} {reply} ({_STAGES[stage]}); it may accept the "
                    "message later.",
                    result_code="SMTP_UNAVAILABLE",
                )
            if isinstance(exc, smtplib.SMTPAuthenticationError):
                return errors.AuthError(
                    f"The mail server {where} refused the login of {self.username!r}: {code} {reply}. Check the "
                    "SMTP username and password.",
                    result_code="SMTP_AUTH_FAILED",
                )
            return errors.Rejected(
                f"The mail server {where} refused the message ({_STAGES[stage]}): {code} {reply}.",
                result_code="SMTP_REJECTED",
            )
        if isinstance(exc, ssl.SSLError):
            return errors.NetworkError(
                f"The TLS handshake with the mail server {where} failed ({_ssl_reason(exc)}).",
                result_code="SMTP_UNREACHABLE",
            )
        if isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(exc, smtplib.SMTPException):
            what = "did not answer in time" if _timed_out(exc) else "closed the connection"
            if stage == "connect":
                if not isinstance(exc, smtplib.SMTPServerDisconnected | TimeoutError):
                    reason = exc.strerror or str(exc) or type(exc).__name__
                    return errors.NetworkError(
                        f"The mail server {where} could not be reached: {reason}.", result_code="SMTP_UNREACHABLE"
                    )
                return errors.NetworkError(
                    f"The mail server {where} {what} before greeting us.", result_code="SMTP_UNREACHABLE"
                )
            if handed_over:
                return errors.OutcomeUnknown(
                    f"The mail server {where} {what} while taking the message; it may or may not have been sent.",
                    result_code="SMTP_OUTCOME_UNKNOWN",
                )
            return errors.Unavailable(
                f"The mail server {where} {what} ({_STAGES[stage]}); the message was not sent.",
                result_code="SMTP_UNAVAILABLE",
            )
        # What remains are smtplib's refusals to go on: no STARTTLS, no AUTH, no SMTPUTF8 on this server.
        detail = self._reply(str(exc)).rstrip(".")
        if stage == "login":
            return errors.AuthError(
                f"Cannot log in to the mail server {where}: {detail}. Check the SMTP security setting.",
                result_code="SMTP_AUTH_FAILED",
            )
        return errors.Rejected(
            f"The mail server {where} cannot take the message as configured ({_STAGES[stage]}): {detail}.",
            result_code="SMTP_REJECTED",
        )

    def _refused(self, recipients: dict[str, tuple[int, bytes]]) -> errors.ConnectorError:
        listing = self._listing(recipients)
        if any(400 <= code < 500 for code, _ in recipients.values()):
            return errors.Unavailable(
                f"The mail server {self.where} did not take the recipients for now: {listing}.",
                result_code="SMTP_UNAVAILABLE",
            )
        return errors.Rejected(
            f"The mail server {self.where} refused every recipient: {listing}.", result_code="SMTP_RECIPIENTS_REFUSED"
        )

    def _partly_refused(self, recipients: dict[str, tuple[int, bytes]], to: list[str], ref: str) -> errors.Rejected:
        sent = [address for address in to if parseaddr(address)[1] not in recipients]
        return errors.Rejected(
            f"The notification for job {ref} went to {', '.join(sent)}, but the mail server {self.where} refused "
            f"{self._listing(recipients)}; it is not sent again, so the others do not get it twice.",
            result_code="SMTP_RECIPIENTS_REFUSED",
        )

    def _listing(self, recipients: dict[str, tuple[int, bytes]]) -> str:
        return "; ".join(f"{address} ({code} {self._reply(reply)})" for address, (code, reply) in recipients.items())

    def _reply(self, reply: bytes | str) -> str:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        return self._redactor.redact(re.sub(r"\s+", " ", text).strip())[:300]


_STAGES = {
    "connect": "connecting",
    "hello": "greeting",
    "starttls": "starting TLS",
    "login": "logging in",
    "send": "sending",
}


def _timed_out(exc: BaseException) -> bool:
    # smtplib reports a read timeout as SMTPServerDisconnected raised while handling the TimeoutError.
    return isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__)


def _close(smtp: smtplib.SMTP, *, polite: bool) -> None:
    # After a failure the connection may be hung: a QUIT would wait out the timeout a second time for nothing.
    try:
        if polite and smtp.sock is not None:
            smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass  # the message was handed over; a failing goodbye does not change that
    finally:
        smtp.close()
