"""
Access tokens: the token file, the scopes a token grants, and the token a
client presented.

Nothing here knows HTTP; the gate (`fulabd.access`) asks `Tokens.principal_of`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

MIN_TOKEN_LENGTH = 16
# Hex: never a leading "-", which a command line would take for an option.
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_hex(32))'"

UPLOAD, READ, REVIEW, ADMIN = "upload", "read", "review", "admin"
SCOPES = (UPLOAD, READ, REVIEW, ADMIN)
WHAT_SCOPE_ALLOWS = {
    UPLOAD: "send lines and PARs over the upload WebSocket",
    READ: "read listings, status and streams",
    REVIEW: "write PARs over HTTP",
    ADMIN: "read metrics and status details",
}


class TokenFileError(ValueError):
    """The token file cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the token's name (None without tokens) and the scopes it grants."""

    name: str | None
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


ANYONE = Principal(None, frozenset(SCOPES))  # a daemon run without --token-file


def refusal_detail(scope: str) -> str:
    """The `detail` of a `forbidden` refusal: what the token may not do, and what to ask for."""
    return (f"this token may not {WHAT_SCOPE_ALLOWS[scope]} (it lacks the {scope!r} scope); "
            f"ask the operator for a token with {scope!r} in its scopes")


class Tokens:
    """The accepted tokens; lookups take the same time whichever token (if any) matches."""

    def __init__(self, principals: dict[str, Principal]):
        # Compare fixed-length digests, so neither a token's length nor its content shows in the timing.
        self._digests = [(hashlib.sha256(token.encode()).digest(), principal)
                         for token, principal in principals.items()]

    def __len__(self):
        return len(self._digests)

    def principal_of(self, presented: str | None) -> Principal | None:
        """Who the token presented stands for, or None when it is missing or not accepted."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, principal in self._digests:
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    def name_of(self, presented: str | None) -> str | None:
        principal = self.principal_of(presented)
        return principal.name if principal is not None else None


def fingerprint(token: str) -> str:
    """A name for a token that has none: short, stable, and useless for guessing it."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def scopes_of(word: str, where: str) -> frozenset[str] | None:
    """The scopes a line's last word lists, or None when the word is part of the name."""
    names = word.split(",")
    unknown = [name for name in names if name not in SCOPES]
    if not unknown:
        return frozenset(names)
    if "," in word:
        raise TokenFileError(f"{where}: unknown scope {unknown[0]!r}; the scopes are {', '.join(SCOPES)} "
                             "(comma-separated, no spaces)")
    return None


def parse_line(fields: list[str], where: str) -> tuple[str, Principal]:
    """`TOKEN [NAME] [SCOPES]`: a last word made only of scope names is the scopes; no scopes grants all."""
    token, rest = fields[0], fields[1:]
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenFileError(f"{where}: a token must have at least {MIN_TOKEN_LENGTH} characters; "
                             f"make one with {MAKE_TOKEN}")
    scopes = scopes_of(rest[-1], where) if rest else None
    if scopes is not None:
        rest = rest[:-1]
    name = " ".join(rest) or fingerprint(token)
    return token, Principal(name, scopes if scopes is not None else frozenset(SCOPES))


def load_tokens(path: str) -> Tokens:
    """Read `TOKEN [NAME] [SCOPES]` lines; `#` starts a comment, blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenFileError(f"cannot read the token file {path}: {e}") from None
    principals: dict[str, Principal] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        token, principal = parse_line(fields, f"{path} line {number}")
        if token in principals:
            raise TokenFileError(f"{path} line {number}: this token is already listed (as "
                                 f"{principals[token].name!r}); give each client its own token")
        principals[token] = principal
    if not principals:
        raise TokenFileError(f"{path} holds no token; add lines `TOKEN NAME [SCOPES]` (make a token with "
                             f"{MAKE_TOKEN}) or leave out --token-file to run without access control")
    return Tokens(principals)


def readable_by_others(path: str) -> bool:
    """True when users other than the owner may read the token file."""
    return bool(os.stat(path).st_mode & 0o044)


def presented_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a client sent: `Authorization: Bearer T`, else `?token=T` (for browsers and old clients)."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return query_token or None
