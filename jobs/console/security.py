"""Who may use the console, and from where.

- Another address than loopback is refused unless a password (HTTP basic auth) or a token (`Authorization:
  Bearer`) is set; there is no default password. Credentials are compared in constant time.
- Every POST carries a CSRF token: a random value in a `SameSite=Strict` cookie that the form repeats (double
  submit), and an `Origin` that, when the browser sends one, names the console itself.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hmac
import ipaddress
import secrets

from config.settings import ConsoleSettings, SettingsError

CSRF_COOKIE = "connector_csrf"
REALM = 'Basic realm="connector console", charset="UTF-8"'


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_configured(settings: ConsoleSettings) -> bool:
    return bool(settings.password.get_secret_value() or settings.token.get_secret_value())


def check_bind(host: str, settings: ConsoleSettings) -> None:
    """Refuse to serve on an address other machines can reach without credentials."""
    if not is_loopback(host) and not auth_configured(settings):
        raise SettingsError(
            f"The console would listen on {host}, which other machines can reach, with no authentication; set "
            "CONNECTOR_CONSOLE__PASSWORD (HTTP basic auth, login console.username) or CONNECTOR_CONSOLE__TOKEN "
            "(Authorization: Bearer), or listen on 127.0.0.1.")


def local_login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def authenticated(header: str | None, settings: ConsoleSettings) -> str | None:
    """Who the `Authorization` header names, or None when it does not match the settings. Without credentials
    configured (loopback only) everyone is the person who started the console."""
    password, token = settings.password.get_secret_value(), settings.token.get_secret_value()
    if not password and not token:
        return local_login()
    scheme, _, value = (header or "").partition(" ")
    if token and scheme.lower() == "bearer" and _same(value.strip(), token):
        return "token"
    if password and scheme.lower() == "basic":
        try:
            user, sep, given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Both compared, always: how long the answer takes says nothing about which one was wrong.
        if sep and _same(user, settings.username) & _same(given, password):
            return user
    return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, form_value: str | None, origin: str | None, host: str | None) -> bool:
    if not cookie or not form_value or not _same(form_value, cookie):
        return False
    if origin is not None and host is not None:
        return origin.split("://", 1)[-1].rstrip("/") == host
    return True
