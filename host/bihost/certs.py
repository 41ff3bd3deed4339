"""A lab certificate authority: one CA, a certificate per agent, one per host (mutual TLS).

`bihost certs init` makes the CA; `bihost certs issue NAME --host ADDR ...` signs a
certificate for an agent (server auth, with its addresses as SANs) or, with `--client`,
for a host (client auth). Keys are EC P-256, written 0600; nothing is overwritten unless
asked, because replacing a CA silently would lock every board out.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .errors import UserError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

CA_CERT, CA_KEY = "ca.pem", "ca.key"


@dataclass(frozen=True)
class IssuedFiles:
    cert: Path
    key: Path


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(
    directory: Path, common_name: str = "BiBench Farm lab CA", days: int = 3650, force: bool = False
) -> IssuedFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    files = IssuedFiles(directory / CA_CERT, directory / CA_KEY)
    if not force and (files.cert.exists() or files.key.exists()):
        raise UserError(
            f"a CA already exists in {directory}; pass --force to replace it (every certificate it "
            "signed stops being trusted)"
        )
    _write(files.key, _key_pem(key), private=True, force=True)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False, force=True)
    return files


def issue(
    directory: Path, name: str, hosts: list[str], client: bool = False, days: int = 825, force: bool = False
) -> IssuedFiles:
    """Sign `name`.pem / `name`.key with the CA in `directory`; `hosts` become the SANs (IPs or DNS names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not name or "/" in name or name.startswith("."):
        raise UserError(f"certificate name {name!r} must be a plain file name")
    if not client and not hosts:
        raise UserError("an agent certificate needs at least one --host (the address the host dials)")
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        # the key of the CA (`init_ca` writes an EC key), so one that can sign certificates
        ca_key = cast(
            "CertificateIssuerPrivateKeyTypes",
            serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None),
        )
    except FileNotFoundError:
        raise UserError(f"no CA in {directory}: run `bihost certs init --dir {directory}` first") from None
    sans: list = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    files = IssuedFiles(directory / f"{name}.pem", directory / f"{name}.key")
    if not force and (files.cert.exists() or files.key.exists()):
        raise UserError(f"{files.cert} exists; pass --force to replace it")
    _write(files.key, _key_pem(key), private=True, force=True)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False, force=True)
    return files
