"""Who may use the dashboard, and which requests may act.

Credentials come from the settings ``dashboard_token`` and ``dashboard_basic_auth``
(``'user:password'``), or their environment variables. They are required whenever
the dashboard listens on an address other than loopback: a dashboard that can shut
workers down must not be open to a network by accident.

A request is let in by any of: ``Authorization: Bearer <token>``, HTTP basic auth,
or the session cookie that ``POST /api/login`` sets (an HMAC of the credential, so
any dashboard process with the same settings accepts it, and none is stored).
Every comparison is constant-time; a refusal says nothing of why.

Actions are POSTs that must carry ``X-CSRF-Token`` with the value ``GET /api/session``
returns: another site can make a browser send a POST (with its cookies or basic
auth), but can neither read that value nor add a custom header without CORS, which
the dashboard never grants. A POST whose ``Origin`` names another host is refused too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from chard.config import Settings
from chard.exceptions import ImproperlyConfigured

COOKIE = "chard_dashboard"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Credentials:
    """The configured credentials (none: the dashboard is open, loopback only)."""

    token: str | None = None
    basic: tuple[str, str] | None = None
    #: This process's CSRF value (random per process).
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.basic is not None

    @property
    def session(self) -> str:
        """The session cookie's value: an HMAC of the credentials, never the secret itself."""
        secret = f"{self.token or ''}\0{':'.join(self.basic or ())}".encode()
        return hmac.new(secret, b"chard-dashboard-session", hashlib.sha256).hexdigest()

    def login(self, token: str | None, user: str | None, password: str | None) -> bool:
        """Return whether a login form's values match a configured credential."""
        if token and self.token is not None and _same(token, self.token):
            return True
        return bool(
            self.basic is not None
            and user is not None
            and password is not None
            and _same(user, self.basic[0]) & _same(password, self.basic[1])
        )

    def allows(self, authorization: str | None, cookie_header: str | None) -> bool:
        """Return whether a request with these headers is let in."""
        if not self.enabled:
            return True
        if cookie_header:
            cookie = SimpleCookie()
            try:
                cookie.load(cookie_header)
            except Exception:  # a malformed cookie header lets nobody in
                return False
            morsel = cookie.get(COOKIE)
            if morsel is not None and _same(morsel.value, self.session):
                return True
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and self.token is not None:
            return _same(value.strip(), self.token)
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, _, password = decoded.partition(":")
            return self.login(None, user, password)
        return False

    def csrf_ok(self, header: str | None, origin: str | None, host: str | None) -> bool:
        """Return whether a POST carries this process's CSRF value and no foreign origin."""
        if origin and origin != "null" and urlsplit(origin).netloc != (host or ""):
            return False
        return header is not None and _same(header, self.csrf)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def credentials_from(conf: Settings) -> Credentials:
    """Read the credentials from the settings (or their environment variables).

    Raises:
        ImproperlyConfigured: ``dashboard_basic_auth`` is not ``'user:password'``.
    """
    token = conf.dashboard_token or None
    basic_text = conf.dashboard_basic_auth or None
    basic = None
    if basic_text is not None:
        user, sep, password = str(basic_text).partition(":")
        if not sep or not user or not password:
            raise ImproperlyConfigured(
                "dashboard_basic_auth (CHARD_DASHBOARD_BASIC_AUTH) must be 'user:password' "
                "with both parts non-empty"
            )
        basic = (user, password)
    return Credentials(token=str(token) if token else None, basic=basic)


def is_loopback(address: str) -> bool:
    """Return whether ``address`` (an IP or ``localhost``) is reachable from this host only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(address: str, credentials: Credentials) -> None:
    """Refuse to listen beyond loopback without credentials.

    Raises:
        ImproperlyConfigured: ``address`` is not loopback and no credential is set.
    """
    if not credentials.enabled and not is_loopback(address):
        raise ImproperlyConfigured(
            f"the dashboard would listen on {address} without a login; set "
            "CHARD_DASHBOARD_TOKEN (or CHARD_DASHBOARD_BASIC_AUTH=user:password), "
            "or use --address 127.0.0.1"
        )
