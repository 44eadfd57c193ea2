"""Credentials in storage and tracking URLs: detect them, and strip them from anything that is shown or stored.

A PostgreSQL URL such as ``postgresql://ranksearch:s3cret@db:5432/ranksearch`` carries its password. ranksearch
needs it to connect, but never writes it anywhere: ``sweep.json``, MLflow params and tags, the report, log lines
and error messages get ``redact(url)`` (``postgresql://ranksearch:***@db:5432/ranksearch``). The recommended
set-up keeps passwords out of URLs altogether: libpq reads ``PGPASSWORD`` and ``~/.pgpass`` (``PGPASSFILE``) by
itself, so ``postgresql://ranksearch@db/ranksearch`` is enough, and that URL can be recorded for ``--resume``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# query parameters that carry a secret in database / HTTP URLs (libpq's password, tokens, keys)
SECRET_QUERY_KEYS = {
    "password",
    "passwd",
    "pwd",
    "token",
    "access_token",
    "secret",
    "api_key",
    "apikey",
    "sslpassword",
}
# database URL schemes (SQLAlchemy dialects) that Optuna's RDBStorage and MLflow's stores accept
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "sqlite", "mssql")
# scheme:// then the authority (up to the path); its userinfo is everything before the authority's last "@"
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\s]*)")


def _split_userinfo(authority: str) -> tuple[str, str | None, str]:
    """(user, password or None, host part) of a URL authority."""
    if "@" not in authority:
        return "", None, authority
    userinfo, host = authority.rsplit("@", 1)
    user, sep, pw = userinfo.partition(":")
    return user, (pw if sep else None), host


def _mask_authority(m: re.Match) -> str:
    user, pw, host = _split_userinfo(m.group("authority"))
    if not pw:
        return m.group(0)
    return f"{m.group('scheme')}{user}:{MASK}@{host}"


def has_password(url: str) -> bool:
    """True when ``url`` holds a password (``user:pw@host``) or a secret query parameter."""
    if not isinstance(url, str) or "://" not in url:
        return False
    if any(_split_userinfo(m.group("authority"))[1] for m in _AUTHORITY.finditer(url)):
        return True
    try:
        query = urlsplit(url).query
    except ValueError:
        return False
    return any(k.lower() in SECRET_QUERY_KEYS and v for k, v in parse_qsl(query, keep_blank_values=True))


def redact(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***`` (anything else unchanged)."""
    if not isinstance(url, str) or "://" not in url:
        return url
    text = _AUTHORITY.sub(_mask_authority, url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.query:
        return text
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
        return text
    query = urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS and v else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(query=query))


def redact_text(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` (an error message, a log line) with every URL's password masked, and each of ``secrets``."""
    out = _AUTHORITY.sub(_mask_authority, str(text))
    for secret in secrets:
        if secret:
            out = out.replace(secret, MASK)
    return out


def password_of(url: str) -> str | None:
    """The password in ``url`` (for masking it wherever it might be echoed), or None."""
    from urllib.parse import unquote

    m = _AUTHORITY.search(url or "")
    pw = _split_userinfo(m.group("authority"))[1] if m else None
    return unquote(pw) if pw else None


def is_database_url(value: str | None) -> bool:
    """True for an SQLAlchemy database URL (``postgresql://``, ``postgresql+psycopg2://``, ``sqlite:///``...)."""
    if not value or "://" not in str(value):
        return False
    scheme = str(value).split("://", 1)[0].split("+", 1)[0].lower()
    return scheme in DATABASE_SCHEMES
