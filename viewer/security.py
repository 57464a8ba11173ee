"""Who may reach a served viewer.

- Exposed (bound to an address other than 127.0.0.1 or localhost), the
  page and its websocket need a token, as Jupyter's do: a random one per
  start (``secrets.token_urlsafe``) or ``PERTURBER_TOKEN``, given once as
  ``/?token=...``; the answer sets a cookie (an HMAC of the token, named after
  the port) that the websocket upgrade carries. A request with neither is
  refused with HTTP 403 before any session is built or websocket upgraded
  (:class:`TokenAuth` refuses in the handlers' ``prepare``).
- Websocket origins are limited to the address and port served (local:
  ``127.0.0.1:PORT`` and ``localhost:PORT``), so another site's page cannot
  drive a viewer it can reach (Bokeh refuses other origins with HTTP 403).
- Panel's ``/components/<module>/...`` route imports the module a URL names;
  :class:`ComponentHandler` answers only for modules already imported from the
  packages the viewer uses, so a plain GET imports nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import sys
from typing import Any, Sequence

from bokeh.server.auth_provider import AuthProvider
from panel.io.resources import COMPONENT_PATH
from panel.io.server import ComponentResourceHandler
from tornado.web import HTTPError

from perturber.pipeline.errors import PerturberError

__all__ = ["LOCAL", "is_exposed", "origins", "new_token", "TokenAuth", "ComponentHandler", "component_route", "MIN_TOKEN"]

LOCAL = ("127.0.0.1", "localhost")
ALL_INTERFACES = ("0.0.0.0", "::", "")
MIN_TOKEN = 16  # characters of a PERTURBER_TOKEN
#: Top-level packages whose components the page may ask resources of.
COMPONENT_PACKAGES = ("panel", "bokeh", "holoviews", "perturber")


def is_exposed(address: str) -> bool:
    """Whether ``address`` can be reached from other machines."""
    return address not in LOCAL


def origins(address: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``host:port`` origins a page's websocket may come from: the served
    address (all interfaces: this machine's names and IPv4 addresses), plus ``extra``."""
    if not is_exposed(address):
        hosts = ["127.0.0.1", "localhost"]
    elif address in ALL_INTERFACES:
        name = socket.gethostname()
        hosts = [name, socket.getfqdn(), "127.0.0.1", "localhost"]
        try:
            hosts += sorted({info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)})
        except OSError:
            pass
    elif ":" in address:  # Bokeh's origin check takes host:port, which an IPv6 address cannot be written as
        raise PerturberError(f"--address {address}: the viewer serves IPv4 addresses and host names only")
    else:
        hosts = [address]
    for origin in extra:
        host, _, number = origin.rpartition(":")
        if not host or not number.isdigit() or "/" in origin or ":" in host:
            raise PerturberError(f"websocket origin {origin!r}: expected host:port, e.g. proxy.example.org:443")
    return list(dict.fromkeys([f"{h}:{port}" for h in hosts] + list(extra)))


def new_token() -> str:
    """``PERTURBER_TOKEN`` when set (at least :data:`MIN_TOKEN` characters), else a fresh random token."""
    token = os.environ.get("PERTURBER_TOKEN")
    if token is None:
        return secrets.token_urlsafe(32)
    if len(token) < MIN_TOKEN or not token.isprintable() or " " in token:
        raise PerturberError(f"PERTURBER_TOKEN: {len(token)} characters; use at least {MIN_TOKEN} printable ones without "
                             "spaces (or unset it for a random token per start)")
    return token


class TokenAuth(AuthProvider):
    """Bokeh's authentication hook: a request is the viewer's user when it
    carries the token (``?token=``) or the cookie set by an earlier one;
    otherwise it is refused with 403 before the page is built or the websocket upgraded."""

    def __init__(self, token: str, port: int):
        self.token = token
        self.cookie = f"perturber_token_{port}"
        self._mark = hmac.new(token.encode(), b"perturber viewer", hashlib.sha256).hexdigest()
        super().__init__()

    @property
    def get_user_async(self):
        return self._user

    @property
    def login_url(self) -> str:
        return "/"  # never redirected to: _user refuses instead

    async def _user(self, handler: Any) -> str:
        given = handler.get_query_argument("token", None)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            handler.set_cookie(self.cookie, self._mark, httponly=True, samesite="Strict")
            return "viewer"
        cookie = handler.get_cookie(self.cookie)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self._mark.encode()):
            return "viewer"
        raise HTTPError(403, reason="Forbidden: this viewer needs its token; open the address it printed when it started")


class ComponentHandler(ComponentResourceHandler):
    """Panel's component resources, for modules already imported from
    :data:`COMPONENT_PACKAGES` only (Panel's own handler imports any module a URL names)."""

    def parse_url_path(self, path: str) -> str:
        module = path.split("/", 1)[0]
        if module.split(".")[0] not in COMPONENT_PACKAGES or module not in sys.modules:
            raise HTTPError(404, "Module not found")
        return super().parse_url_path(path)


def component_route() -> tuple:
    """The route replacing Panel's (Tornado takes the first matching route: pass it in ``extra_patterns``)."""
    return (f"/{COMPONENT_PATH}(.*)", ComponentHandler, {})
