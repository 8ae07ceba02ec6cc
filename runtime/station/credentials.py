"""Credentials in source, broker and webhook URLs: taken from the environment or a file, and never
shown.

A camera URL often carries `user:password@`. The station must use it to connect, yet nothing it
writes may contain it: events (which also go out over MQTT and webhooks), logs, the status line,
summaries, metrics labels and error lines. Two rules do this:

- `masked(text)`: every `scheme://user:password@` in the text becomes `scheme://***@`, and every
  secret the station has seen (`remember`) becomes `***`. Anything shown goes through it.
- `expand(uri)`: `${NAME}` is replaced by the environment variable NAME and `${file:PATH}` by the
  first line of the file PATH (systemd's LoadCredential= puts secrets in such files), so a
  password need not be on the command line that `ps` shows. Expanded values are remembered as
  secrets.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ZsadEdgeError

MASK = "***"
# scheme:/ too: a URL that went through a path normalisation (http:/user:pw@host) still carries them
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*:/{1,2})(?P<userinfo>[^/@\s'\"]+)@")
_PLACEHOLDER = re.compile(r"\$\{(?P<name>[^}]+)\}")
_MIN_SECRET_LENGTH = 3  # shorter values (an empty or one-letter password) would mask ordinary text
_secrets: set[str] = set()
_lock = threading.Lock()


def remember(secret: str | None) -> None:
    """Mask this value wherever it appears from now on (and its percent-decoded form)."""
    if not secret:
        return
    with _lock:
        for value in {secret, unquote(secret)}:
            if len(value) >= _MIN_SECRET_LENGTH:
                _secrets.add(value)


def masked(text: str) -> str:
    """The text with URL user info and every remembered secret replaced by ***."""
    text = _USERINFO.sub(lambda match: f"{match['scheme']}{MASK}@", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def expand(uri: str, what: str = "source") -> str:
    """Replace ${NAME} (environment) and ${file:PATH} (first line of a file) placeholders; remember
    the password of any user info in the result as a secret."""

    def value(match: re.Match) -> str:
        name = match["name"]
        if name.startswith("file:"):
            path = Path(os.path.expandvars(name[5:]))
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ZsadEdgeError(f"{what}: cannot read the credential file {path}: {exc.strerror}") from None
            secret = lines[0].strip() if lines else ""
        else:
            if name not in os.environ:
                raise ZsadEdgeError(f"{what}: the environment variable {name} is not set (it is named in ${{{name}}})")
            secret = os.environ[name]
        remember(secret)
        return secret

    expanded = _PLACEHOLDER.sub(value, uri)
    remember_userinfo(expanded)
    return expanded


def remember_userinfo(url: str) -> None:
    """Remember the password in a URL's user info as a secret."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    remember(password)


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without user info, user, password): for clients that take credentials apart."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = parts._replace(netloc=host).geturl()
    password = unquote(parts.password) if parts.password is not None else None
    return bare, unquote(parts.username), password


class MaskingFilter:
    """A logging filter that masks credentials in every record it passes (install it on handlers)."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        cleaned = masked(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
