"""Authentication and authorization, pure: bearer token → principal →
permission check against topic patterns.  No Twisted here (the HTTP layer
adapts it).

Two sources of principals, either or both:

* a static token file (``--auth-tokens FILE``), JSON::

      {"tokens": [
        {"name": "orders-app", "token": "s3cret...",
         "permissions": {"orders.*": ["publish", "subscribe"]}},
        {"name": "ops", "token_sha256": "<hex sha256 of the token>",
         "permissions": {"*": ["admin"]}}
      ]}

  (``token_sha256`` keeps the secret itself out of the file);

* HS256 JWTs signed with ``--jwt-secret``/``--jwt-secret-file``, whose
  ``permissions`` claim has the same shape (``{"pattern": [perms]}``), ``sub``
  names the principal, and ``exp``/``nbf`` are honoured.

Permissions are ``publish``, ``subscribe`` and ``admin``, granted per topic
pattern (``fnmatch`` globs: ``*``, ``?``, ``[..]``).  ``admin`` on a pattern
implies publish and subscribe on it; node-wide admin actions (cluster views,
metrics) need ``admin`` on ``*``.  Tokens are compared by SHA-256 digest and
never appear in errors or repr.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from sprawl.errors import ConfigError, SprawlError

PERMISSIONS = ("publish", "subscribe", "admin")
MAX_HEADER = 8192
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")


class Unauthorized(SprawlError):
    """No credentials, or credentials that do not verify (401)."""

    status = 401
    code = "unauthorized"


class Forbidden(SprawlError):
    """Valid credentials without the permission asked for (403)."""

    status = 403
    code = "forbidden"


@dataclass(frozen=True)
class Grant:
    """Permissions on the topics matching ``pattern``."""

    pattern: str
    permissions: frozenset[str]

    def covers(self, permission: str, topic: str | None) -> bool:
        """Whether this grant allows ``permission`` on ``topic`` (None: node-wide)."""
        if permission not in self.permissions and "admin" not in self.permissions:
            return False
        if topic is None:
            return self.pattern == "*"
        return fnmatchcase(topic, self.pattern)


@dataclass(frozen=True)
class Principal:
    """Who made a request, and what they may do."""

    name: str
    grants: tuple[Grant, ...] = field(default=())
    #: True for the principal of a node without authentication: everything allowed.
    unrestricted: bool = False
    #: When the credentials stop being valid (seconds since the epoch; a JWT's
    #: ``exp`` plus the accepted clock-skew leeway), None for static tokens.
    #: Streams and WebSockets opened with them are closed then.
    expires: float | None = None

    def allows(self, permission: str, topic: str | None = None) -> bool:
        """Whether the principal holds ``permission`` on ``topic`` (None: node-wide)."""
        if self.unrestricted:
            return True
        return any(g.covers(permission, topic) for g in self.grants)

    def require(self, permission: str, topic: str | None = None) -> None:
        """Raise :class:`Forbidden` unless :meth:`allows`."""
        if not self.allows(permission, topic):
            where = f"topic {topic!r}" if topic is not None else "this node"
            raise Forbidden(f"{self.name} may not {permission} on {where}", code="forbidden")


ANONYMOUS = Principal("anonymous", unrestricted=True)


def parse_permissions(value: Any, where: str) -> tuple[Grant, ...]:
    """``{"pattern": ["publish", ...]}`` → grants; ValueError with a message when malformed."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where}: permissions must be a non-empty object of pattern → list")
    grants = []
    for pattern, perms in value.items():
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= 249:
            raise ValueError(f"{where}: a topic pattern must be a string of 1-249 characters")
        if not isinstance(perms, list) or not perms or not all(p in PERMISSIONS for p in perms):
            raise ValueError(
                f"{where}: permissions of {pattern!r} must be a list of {', '.join(PERMISSIONS)}"
            )
        grants.append(Grant(pattern, frozenset(perms)))
    return tuple(grants)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenTable:
    """Static tokens, keyed by their SHA-256 digest."""

    def __init__(self, entries: dict[str, Principal]):
        self._by_digest = entries

    def __repr__(self) -> str:
        return f"TokenTable({len(self._by_digest)} tokens)"

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def from_json(cls, data: Any, where: str = "token file") -> TokenTable:
        """Build from the parsed token file; :class:`ConfigError` on any mistake."""
        try:
            items = data["tokens"] if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ValueError(f'{where}: expected {{"tokens": [...]}}')
            out: dict[str, Principal] = {}
            for i, item in enumerate(items):
                at = f"{where}: tokens[{i}]"
                if not isinstance(item, dict):
                    raise ValueError(f"{at} must be an object")
                unknown = set(item) - {"name", "token", "token_sha256", "permissions"}
                if unknown:
                    raise ValueError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
                name = item.get("name")
                if not isinstance(name, str) or not name:
                    raise ValueError(f"{at}: name must be a non-empty string")
                if ("token" in item) == ("token_sha256" in item):
                    raise ValueError(f"{at}: give exactly one of token, token_sha256")
                if "token" in item:
                    tok = item["token"]
                    if not isinstance(tok, str) or len(tok) < 16 or not _TOKEN_CHARS.match(tok):
                        raise ValueError(f"{at}: token must be 16+ characters of [A-Za-z0-9._~+/=-]")
                    digest = _digest(tok)
                else:
                    digest = item["token_sha256"]
                    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                        raise ValueError(f"{at}: token_sha256 must be 64 lower-case hex digits")
                if digest in out:
                    raise ValueError(f"{at}: the same token appears twice")
                out[digest] = Principal(name, parse_permissions(item.get("permissions"), at))
            return cls(out)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def load(cls, path: str) -> TokenTable:
        """Read a token file."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read --auth-tokens file {path}: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(f"--auth-tokens file {path} is not valid JSON: {e}") from None
        return cls.from_json(data, f"--auth-tokens {path}")

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``, or None."""
        return self._by_digest.get(_digest(token))


class JWTVerifier:
    """HS256 JWTs carrying a ``permissions`` claim."""

    def __init__(self, secret: bytes, leeway: float = 30.0):
        if len(secret) < 32:
            raise ConfigError("the JWT secret must be at least 32 bytes")
        self._secret = secret
        self.leeway = leeway

    def __repr__(self) -> str:
        return "JWTVerifier(HS256)"

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; :class:`Unauthorized` otherwise."""
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                leeway=self.leeway,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("the token is not valid", code="invalid_token") from None
        except Exception:  # malformed input the library did not classify
            raise Unauthorized("the token is not valid", code="invalid_token") from None
        sub = claims.get("sub")
        name = sub if isinstance(sub, str) and sub else "jwt"
        try:
            grants = parse_permissions(claims.get("permissions"), "token")
        except ValueError as e:
            raise Unauthorized(
                f"the token's permissions claim is malformed: {e}", code="invalid_token"
            ) from None
        return Principal(name, grants, expires=float(claims["exp"]) + self.leeway)


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`.

    With neither tokens nor a JWT secret, authentication is off: everyone is
    :data:`ANONYMOUS` (unrestricted), as a node with no flags has always been.
    """

    def __init__(self, tokens: TokenTable | None = None, jwt: JWTVerifier | None = None):
        self.tokens = tokens
        self.jwt = jwt

    @property
    def enabled(self) -> bool:
        """Whether requests must carry credentials."""
        return self.tokens is not None or self.jwt is not None

    def authenticate(self, header: bytes | str | None) -> Principal:
        """The principal of a request; :class:`Unauthorized` when the header is missing or bad."""
        if not self.enabled:
            return ANONYMOUS
        if header is None or header == b"" or header == "":
            raise Unauthorized(
                "this node requires a bearer token (Authorization: Bearer ...)", code="unauthorized"
            )
        if isinstance(header, bytes):
            if len(header) > MAX_HEADER:
                raise Unauthorized("the Authorization header is too long", code="invalid_token")
            try:
                header = header.decode("ascii")
            except UnicodeDecodeError:
                raise Unauthorized("the Authorization header is not ASCII", code="invalid_token") from None
        if len(header) > MAX_HEADER:
            raise Unauthorized("the Authorization header is too long", code="invalid_token")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("use Authorization: Bearer <token>", code="unauthorized")
        return self.authenticate_token(token)

    def authenticate_token(self, token: str) -> Principal:
        """The principal of a bare token (also used for ``access_token`` query parameters)."""
        if not self.enabled:
            return ANONYMOUS
        if not token or len(token) > MAX_HEADER or not _TOKEN_CHARS.match(token):
            raise Unauthorized("the token is not valid", code="invalid_token")
        if self.tokens is not None:
            p = self.tokens.lookup(token)
            if p is not None:
                return p
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.verify(token)
        raise Unauthorized("the token is not valid", code="invalid_token")


def load_authenticator(
    tokens_file: str | None, jwt_secret: str | None, jwt_secret_file: str | None
) -> Authenticator:
    """Build the node's authenticator from its options (off when none is given)."""
    if jwt_secret and jwt_secret_file:
        raise ConfigError("give --jwt-secret or --jwt-secret-file, not both")
    tokens = TokenTable.load(tokens_file) if tokens_file else None
    secret: bytes | None = None
    if jwt_secret_file:
        try:
            secret = Path(jwt_secret_file).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read --jwt-secret-file {jwt_secret_file}: {e.strerror}") from None
    elif jwt_secret:
        secret = jwt_secret.encode("utf-8")
    return Authenticator(tokens, JWTVerifier(secret) if secret is not None else None)
