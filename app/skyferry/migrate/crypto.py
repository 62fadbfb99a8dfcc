"""Encryption at rest of archive chunks: AES-256-GCM, one random 96-bit nonce per chunk.

A chunk's stored bytes are ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; the
object name is the associated data, so a chunk cannot be swapped for another unnoticed.
The manifest's encryption header carries a *key check* (the text ``skyferry key check``
sealed the same way), which tells a wrong key from a corrupted chunk before anything is
read.  The key is 32 bytes, given as 64 hex characters or base64, from a file or an
environment variable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from skyferry.core.errors import ConfigurationError
from skyferry.migrate.errors import WrongKey

ALGORITHM: Final = "AES-256-GCM"
NONCE_BYTES: Final = 12
_KEY_CHECK_TEXT: Final = b"skyferry key check"
_KEY_CHECK_NAME: Final = "manifest.json#key_check"


def parse_key(text: str, setting: str) -> bytes:
    """A 32-byte key from 64 hex characters or base64; ``setting`` names where it came from."""
    text = text.strip()
    candidates: list[bytes] = []
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(text))
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(text, validate=True))
    for key in candidates:
        if len(key) == 32:
            return key
    raise ConfigurationError(f"{setting}: the encryption key must be 32 bytes, written as 64 hex characters or base64")


def load_key(key_file: str | None, key_env: str | None) -> bytes | None:
    """The key from ``--key-file`` or ``--key-env`` (at most one), or ``None`` for no encryption."""
    if key_file and key_env:
        raise ConfigurationError("give --key-file or --key-env, not both")
    if key_file:
        try:
            data = Path(key_file).read_bytes()
        except OSError as e:
            raise ConfigurationError(f"--key-file {key_file}: cannot read it ({e.strerror})") from e
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as e:
            raise ConfigurationError(
                f"--key-file {key_file}: the file holds raw bytes, not the key written as 64 hex characters or base64",
                hint=f"write it as 64 hex characters: xxd -p -c 64 {key_file} > {key_file}.hex",
            ) from e
        return parse_key(text, f"--key-file {key_file}")
    if key_env:
        value = os.environ.get(key_env)
        if not value:
            raise ConfigurationError(f"--key-env {key_env}: the environment variable is not set")
        return parse_key(value, f"--key-env {key_env}")
    return None


def new_key() -> str:
    """A fresh random key as 64 hex characters (for ``docs`` and tests)."""
    return os.urandom(32).hex()


class ChunkCipher:
    """Seals and opens chunks with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigurationError("AES-256-GCM needs a 32-byte key")
        self.key = key
        """The key, for a child process of the same command (:mod:`skyferry.migrate.child`)."""
        self._aead = AESGCM(key)

    def seal(self, name: str, plaintext: bytes) -> bytes:
        """``nonce || ciphertext || tag`` of ``plaintext``, bound to the object ``name``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes:
        """The plaintext of a sealed object; raises :class:`WrongKey` if the tag does not verify."""
        if len(sealed) < NONCE_BYTES + 16:
            raise WrongKey(name, "too short to be an AES-256-GCM sealed object")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
        except InvalidTag as e:
            raise WrongKey(name, "decryption failed: wrong key, or the object was altered") from e

    def header(self) -> dict[str, Any]:
        """The manifest's encryption header (algorithm and key check)."""
        check = self.seal(_KEY_CHECK_NAME, _KEY_CHECK_TEXT)
        return {"algorithm": ALGORITHM, "key_check": base64.b64encode(check).decode()}

    def check(self, header: dict[str, Any]) -> None:
        """Raise :class:`WrongKey` unless this key is the one the archive was written with."""
        if header.get("algorithm") != ALGORITHM:
            raise WrongKey("manifest.json", f"unsupported encryption algorithm {header.get('algorithm')!r}")
        try:
            sealed = base64.b64decode(str(header.get("key_check", "")), validate=True)
        except (binascii.Error, ValueError) as e:
            raise WrongKey("manifest.json", "the encryption header's key_check is not base64") from e
        try:
            opened = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _KEY_CHECK_NAME.encode())
        except InvalidTag as e:
            raise WrongKey("manifest.json", "wrong encryption key: this key did not write the archive") from e
        if opened != _KEY_CHECK_TEXT:
            raise WrongKey("manifest.json", "wrong encryption key")
