"""Who may query the server: hashed passwords and bearer tokens from the catalog's
``[serve.users]`` and ``[serve.tokens]`` tables, and the session tokens a login hands out.

Passwords are kept as scrypt hashes (``federator serve --hash-password`` makes one), static
bearer tokens as SHA-256 digests (``federator serve --new-token``); nothing here keeps or
shows a clear secret.

>>> entry = hash_password("s3cret", n=2**10)
>>> check_password("s3cret", entry), check_password("guess", entry)
(True, False)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from federator.errors import CatalogError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # about 16 MiB and 50 ms a check
SESSION_SECONDS = 3600.0  # a bearer token from a login lasts this long unused


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A ``[serve.users]`` entry for ``password``: ``scrypt$n$r$p$salt$hash`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, entry: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` entry (constant-time compare)."""
    n, r, p, salt, digest = _split_entry(entry)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)


def new_token() -> tuple[str, str]:
    """A fresh bearer token and its ``[serve.tokens]`` entry (``sha256$hex``)."""
    token = secrets.token_urlsafe(32)
    return token, token_entry(token)


def token_entry(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Checks ``Basic`` and ``Bearer`` credentials; a good login gets a session token.

    >>> auth = Authenticator({"users": {"ada": hash_password("pw", n=2**10)}})
    >>> token = auth.login("ada", "pw")
    >>> auth.bearer(token)
    'ada'
    """

    def __init__(self, serve_settings: Mapping[str, Any]):
        self.users = _table(serve_settings, "users")
        self.tokens = _table(serve_settings, "tokens")
        for name, entry in self.users.items():
            _split_entry(entry, f"[serve.users] {name}")
        for name, entry in self.tokens.items():
            if not entry.startswith("sha256$"):
                raise CatalogError(
                    f"[serve.tokens] {name} must be a sha256$... entry "
                    "(make one with `federator serve --new-token`)"
                )
        self._sessions: dict[str, tuple[str, float]] = {}  # sha256 of token -> user, expiry
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """Whether the catalog names anyone who could log in."""
        return bool(self.users or self.tokens)

    def login(self, user: str, password: str) -> str | None:
        """A session bearer token for a good user/password, else None."""
        entry = self.users.get(user)
        if entry is None:
            check_password(password, _dummy_entry())  # unknown users take as long as known
            return None
        if not check_password(password, entry):
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._forget_expired()
            self._sessions[_digest(token)] = (user, time.monotonic() + SESSION_SECONDS)
        return token

    def bearer(self, token: str) -> str | None:
        """The identity a bearer token stands for (a session's user, a static token's name)."""
        digest = _digest(token)
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(digest)
            if session is not None and session[1] > now:
                self._sessions[digest] = (session[0], now + SESSION_SECONDS)  # idle time counts
                return session[0]
        entry = "sha256$" + digest
        for name, known in self.tokens.items():
            if hmac.compare_digest(known, entry):
                return f"token:{name}"
        return None

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, until) in self._sessions.items() if until <= now]:
            del self._sessions[key]

    def __repr__(self) -> str:
        return f"<Authenticator users={sorted(self.users)} tokens={sorted(self.tokens)}>"


def _table(settings: Mapping[str, Any], name: str) -> dict[str, str]:
    table = settings.get(name, {})
    if not isinstance(table, Mapping) or not all(isinstance(v, str) for v in table.values()):
        raise CatalogError(f"[serve.{name}] must map names to hash strings")
    return dict(table)


def _split_entry(entry: str, where: str = "password entry") -> tuple[int, int, int, bytes, bytes]:
    parts = entry.split("$")
    try:
        kind, n, r, p, salt, digest = parts
        if kind != "scrypt":
            raise ValueError
        return int(n), int(r), int(p), _unb64(salt), _unb64(digest)
    except ValueError:
        raise CatalogError(
            f"{where} is not a scrypt$... hash (make one with `federator serve --hash-password`)"
        ) from None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


@functools.cache
def _dummy_entry() -> str:
    return hash_password("")
