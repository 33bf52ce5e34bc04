"""Secrets at rest: values the portal must show again (service keys) are stored encrypted with
Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under a key derived from SECRET_KEY with
HKDF; SECRET_KEY_FALLBACKS still decrypt, so a rotated SECRET_KEY keeps old rows readable.

``EncryptedCharField`` does it transparently: Python code reads and writes plain values, the
database holds only tokens. A value that is not a token (a row from before encryption) reads as
it is; the migration that introduced the field encrypts those.
"""
from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import models

TOKEN_PREFIX = "gAAAAA"  # every Fernet token starts so (version byte 0x80 and a timestamp)


def _derive(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mlportal secrets at rest v1").derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


@lru_cache(maxsize=4)
def _fernet(secret: str, fallbacks: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([_derive(secret), *(_derive(s) for s in fallbacks)])


def fernet() -> MultiFernet:
    return _fernet(settings.SECRET_KEY, tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ()))


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    """Returns the plain value of ``token``; a value that is not a token is returned as it is (a
    row written before encryption). Raises InvalidToken for a token no known key opens."""
    if not token.startswith(TOKEN_PREFIX):
        return token
    return fernet().decrypt(token.encode()).decode()


def is_encrypted(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


class EncryptedCharField(models.CharField):
    """A CharField whose database value is a Fernet token of the Python value."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_length", 255)
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        try:
            return decrypt(value)
        except InvalidToken:
            raise ValueError(f"{self.model.__name__}.{self.name} cannot be decrypted: was SECRET_KEY changed "
                             "without listing the old one in SECRET_KEY_FALLBACKS?") from None

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "" or is_encrypted(value):
            return value
        return encrypt(value)


__all__ = ["EncryptedCharField", "InvalidToken", "decrypt", "encrypt", "is_encrypted"]
