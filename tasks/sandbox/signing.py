"""``Signer``: the sandbox's RSA key pair, which signs its webhooks as VideoSDK signs its own.

A webhook's ``videosdk-signature`` header is the base64 (standard alphabet, padded) of the
RSA-SHA256 PKCS#1 v1.5 signature of the exact body bytes sent. The key is 2048-bit, one per
sandbox run: made from a PEM private key given (PKCS#1 or PKCS#8, unencrypted), else generated
when first needed (the first signature or public key asked for; about 0.1 s, so a sandbox that
never signs costs nothing). ``rotate()`` replaces it at run time, so a receiver's "fetch the key
again once when a signature fails" can be tested. Thread-safe.
"""

from __future__ import annotations

import base64
import threading

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KEY_SIZE_BITS = 2048
PUBLIC_EXPONENT = 65537


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    """The RSA private key in ``pem``; ValueError for anything else (or an encrypted key)."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError) as exc:  # TypeError: it is encrypted
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the private key is not an RSA key")
    return key


def public_pem(key: rsa.RSAPrivateKey) -> str:
    """``key``'s public half as PEM text (SubjectPublicKeyInfo, ``-----BEGIN PUBLIC KEY-----``)."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def private_pem(key: rsa.RSAPrivateKey) -> str:
    """``key`` as unencrypted PKCS#8 PEM text, to pass to another sandbox run."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_SIZE_BITS)


class Signer:
    """Holds the key pair and signs with it; see the module docstring."""

    def __init__(self, private_key_pem: str | bytes | None = None) -> None:
        self._lock = threading.Lock()
        self._key = None if private_key_pem is None else load_private_key(private_key_pem)
        self._public_pem = None if self._key is None else public_pem(self._key)

    @property
    def public_key_pem(self) -> str:
        """The current public key as PEM text."""
        return self._current()[1]

    @property
    def private_key_pem(self) -> str:
        """The current private key as PKCS#8 PEM text (for reproducing a run; a test key only)."""
        return private_pem(self._current()[0])

    def sign(self, body: bytes) -> str:
        """base64 of the RSA-SHA256 PKCS#1 v1.5 signature of ``body``, with the current key."""
        key = self._current()[0]
        signature = key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")

    def rotate(self, private_key_pem: str | bytes | None = None) -> str:
        """Replace the key (with ``private_key_pem``, else a new one); the new public PEM."""
        key = generate_key() if private_key_pem is None else load_private_key(private_key_pem)
        pem = public_pem(key)
        with self._lock:
            self._key, self._public_pem = key, pem
        return pem

    def _current(self) -> tuple[rsa.RSAPrivateKey, str]:
        with self._lock:  # generated under the lock: two first callers get one key
            if self._key is None or self._public_pem is None:
                self._key = generate_key()
                self._public_pem = public_pem(self._key)
            return self._key, self._public_pem
