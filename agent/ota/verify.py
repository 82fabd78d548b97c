"""Is this image the one the device's trusted keys vouch for? Size, SHA-256 and a detached signature.

The signature is over a short statement naming the version, the image's SHA-256 and its size (not
over the image: a multi-GB file need not be read twice, and the statement binds the version the
cloud reports to the bytes installed):

    vehicle-agent software update v1
    version: 2.4.1
    sha256: 9f86d0...
    size: 104857600

Ed25519, or ECDSA (P-256, P-384, P-521) over SHA-256 with a DER signature, from the `cryptography`
package; the public keys are PEM files in the local config (`ota.public_keys`), never from the cloud.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # cryptography costs ~6 MB of RSS: imported when keys are loaded, not at start
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

CHUNK = 1024 * 1024


class VerifyError(Exception):
    """Why an image is refused; the text is safe to report."""


def statement(version: str, sha256: str, size: int) -> bytes:
    """What an update's signature signs (docs/ota.md)."""
    return f"vehicle-agent software update v1\nversion: {version}\nsha256: {sha256}\nsize: {size}\n".encode()


def load_keys(paths: Sequence[Path]) -> list[PublicKey]:
    """The trusted public keys; VerifyError naming the file that is not an Ed25519 or ECDSA PEM key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: list[PublicKey] = []
    for path in paths:
        try:
            key = load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise VerifyError(f"ota.public_keys: {path}: {exc.strerror or exc}") from None
        except (ValueError, UnsupportedAlgorithm):
            raise VerifyError(f"ota.public_keys: {path}: not a PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise VerifyError(f"ota.public_keys: {path}: {type(key).__name__} keys are not accepted "
                              "(Ed25519 or ECDSA)")
        keys.append(key)
    return keys


def signed_by(keys: Sequence[PublicKey], signature: bytes, message: bytes) -> bool:
    """True when one of `keys` made `signature` over `message`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    for key in keys:
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            else:
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return True
    return False


def check_signature(keys: Sequence[PublicKey], signature: bytes, *, version: str, sha256: str, size: int) -> None:
    """Raise VerifyError unless one of the trusted keys signed this version, sha256 and size."""
    if not keys:
        raise VerifyError("no trusted public keys configured (ota.public_keys): nothing can be installed")
    if not signed_by(keys, signature, statement(version, sha256, size)):
        raise VerifyError("signature verification failed: no trusted key signed this version, sha256 and size")


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read once in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def verify_image(path: Path, *, version: str, sha256: str, size: int, signature: bytes,
                 keys: Sequence[PublicKey]) -> None:
    """Raise VerifyError unless the signature over the statement is good and the file matches it."""
    check_signature(keys, signature, version=version, sha256=sha256, size=size)
    try:
        got_size, got_sha = file_digest(path)
    except OSError as exc:
        raise VerifyError(f"image unreadable: {exc.strerror or exc}") from None
    if got_size != size:
        raise VerifyError(f"size mismatch: the image has {got_size} bytes, the update says {size}")
    if got_sha != sha256:
        raise VerifyError(f"sha256 mismatch: the image hashes to {got_sha[:16]}..., the update says {sha256[:16]}...")
