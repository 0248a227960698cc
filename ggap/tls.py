"""TLS contexts for the client port, the peer port and the clients, built from PEM files.

Every file is checked before a context is built, so a node or a CLI command refuses a bad
file at start with a message naming it (missing, unreadable, not PEM, expired or not yet
valid, a key that does not belong to its certificate, an encrypted key) instead of failing
later, one handshake at a time. The checks read validity dates with `cryptography`; the
contexts themselves are the standard library's.

What is negotiated: TLS 1.2 or newer; on the client port ALPN `h2` (grpcio refuses a
server that selects no ALPN protocol). Clients always verify the server's chain and its
host name (IP SANs for IP addresses); servers verify client chains only when asked
(`--client-cert-auth`; always on the peer port).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from ggap.config.model import PeerTlsConfig, TlsConfig

__all__ = [
    "ALPN_H2",
    "NodeTls",
    "PeerIdentity",
    "PeerNotAllowedError",
    "RefusalLog",
    "TlsFileError",
    "check_certificates",
    "client_context",
    "describe_handshake_error",
    "node_tls",
    "server_context",
]

ALPN_H2 = "h2"


class TlsFileError(ValueError):
    """A certificate or key file that cannot be used; the message names the file."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsFileError(path, f"{what} file not found") from None
    except IsADirectoryError:
        raise TlsFileError(path, f"{what} file is a directory") from None
    except OSError as exc:
        raise TlsFileError(path, f"cannot read the {what} file: {exc.strerror or exc}") from None


def check_certificates(path: str, what: str = "certificate", *, now: datetime.datetime | None = None) -> int:
    """Check that `path` holds PEM certificates, each valid now; returns how many.

    Raises TlsFileError naming the file (and the certificate's subject and dates when one
    is expired or not yet valid).
    """
    from cryptography import x509  # only needed here: keeps client start-up light

    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFileError(path, f"no PEM certificate in the {what} file") from None
    moment = now or datetime.datetime.now(datetime.UTC)
    for cert in certs:
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        if cert.not_valid_after_utc < moment:
            raise TlsFileError(
                path, f"{what} {subject!r} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
        if cert.not_valid_before_utc > moment:
            raise TlsFileError(
                path,
                f"{what} {subject!r} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
            )
    return len(certs)


def _no_password() -> bytes:
    raise TlsFileError("", "encrypted")


def _load_pair(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    check_certificates(cert_file, "certificate")
    _read(key_file, "key")  # a clear message for a missing or unreadable key
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except TlsFileError:
        raise TlsFileError(key_file, "the key is encrypted (encrypted keys are not supported)") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsFileError(key_file, f"the key does not match the certificate in {cert_file}") from None
        raise TlsFileError(key_file, f"cannot load the key with certificate {cert_file}: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca_file: str) -> None:
    check_certificates(ca_file, "CA certificate")
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsFileError(ca_file, f"cannot load the CA certificates: {exc}") from None


def server_context(
    cert_file: str,
    key_file: str,
    trusted_ca_file: str = "",
    *,
    require_client_cert: bool = False,
    alpn: Sequence[str] = (ALPN_H2,),
) -> ssl.SSLContext:
    """A server context: our certificate, and with `require_client_cert` a client must
    present a certificate chaining to `trusted_ca_file` (which it then requires)."""
    if require_client_cert and not trusted_ca_file:
        raise ValueError("require_client_cert needs trusted_ca_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(ctx, cert_file, key_file)
    if trusted_ca_file:
        _load_ca(ctx, trusted_ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(
    cacert: str = "",
    cert: str = "",
    key: str = "",
    *,
    alpn: Sequence[str] = (ALPN_H2,),
) -> ssl.SSLContext:
    """A client context that verifies the server (chain to `cacert`, or to the system's CAs
    when empty, and host name) and presents `cert`/`key` when given (both or neither)."""
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs its key and a key its certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cacert:
        _load_ca(ctx, cacert)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert:
        _load_pair(ctx, cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class PeerNotAllowedError(ssl.SSLError):
    """A peer whose certificate chains to the trusted CA but is not one of the allowed
    identities (peer_tls.allowed_cn / allowed_hostname). An SSLError so the transport
    treats it like any other certificate refusal (logged as a WARNING, not retried loudly)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # type: ignore[misc]  # what describe_handshake_error shows

    def __str__(self) -> str:
        return str(self.reason)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


@attrs.frozen
class PeerIdentity:
    """Which peer certificates the peer port accepts beyond "chains to the trusted CA"
    (etcd's --peer-cert-allowed-cn and --peer-cert-allowed-hostname).

    `allowed_cn`: comma-separated; the certificate's subject CN must be one of them.
    `allowed_hostname`: comma-separated; one of the certificate's DNS SANs (exact,
    case-insensitive) or IP SANs must be one of them. Both empty: any chained certificate.
    Both set: both must hold."""

    allowed_cn: tuple[str, ...] = ()
    allowed_hostname: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, peer_tls: PeerTlsConfig) -> PeerIdentity:
        return cls(_names(peer_tls.allowed_cn), _names(peer_tls.allowed_hostname))

    def __bool__(self) -> bool:
        return bool(self.allowed_cn or self.allowed_hostname)

    def problem(self, cert: dict[str, object] | None) -> str:
        """Why the verified peer certificate `cert` (ssl's getpeercert() dict) is not
        allowed, or "" when it is."""
        if not self:
            return ""
        if not cert:
            return "no peer certificate"
        if self.allowed_cn:
            subject = cert.get("subject", ())
            cns = [v for rdn in subject for k, v in rdn if k == "commonName"]  # type: ignore[attr-defined]
            if not any(cn in self.allowed_cn for cn in cns):
                shown = ", ".join(repr(c) for c in cns) or "none"
                return f"certificate CN {shown} is not in peer_tls.allowed_cn ({', '.join(self.allowed_cn)})"
        if self.allowed_hostname:
            sans = cert.get("subjectAltName", ())
            dns = {str(v).lower() for k, v in sans if k == "DNS"}  # type: ignore[attr-defined]
            ips = {_ip(str(v)) for k, v in sans if k == "IP Address"}  # type: ignore[attr-defined]
            ok = any(
                name.lower() in dns or (_ip(name) is not None and _ip(name) in ips)
                for name in self.allowed_hostname
            )
            if not ok:
                shown = ", ".join(f"{k}:{str(v).strip()}" for k, v in sans) or "none"  # type: ignore[attr-defined]
                return (
                    f"certificate SANs ({shown}) match no peer_tls.allowed_hostname "
                    f"({', '.join(self.allowed_hostname)})"
                )
        return ""

    def check(self, cert: dict[str, object] | None) -> None:
        """Raise PeerNotAllowedError when `problem` finds one."""
        reason = self.problem(cert)
        if reason:
            raise PeerNotAllowedError(reason)


@attrs.frozen
class NodeTls:
    """Every TLS context a node uses; None where that traffic is plaintext."""

    # The client port's server side.
    client_port: ssl.SSLContext | None = None
    # Node-to-node calls to other nodes' client ports (forwarded writes, join, promotion).
    node_client: ssl.SSLContext | None = None
    # The peer port: listener and dialer (Raft messages and snapshot transfers).
    peer_server: ssl.SSLContext | None = None
    peer_client: ssl.SSLContext | None = None
    # Which verified peer certificates the peer port accepts (both directions).
    peer_identity: PeerIdentity = PeerIdentity()


def node_tls(tls: TlsConfig, peer_tls: PeerTlsConfig) -> NodeTls:
    """Build a node's contexts from its `[tls]` and `[peer_tls]` config sections.

    Node-to-node calls on the client port verify the other node with `tls.trusted_ca_file`
    (the system CAs when empty) and present the node's peer certificate when peer TLS is
    on, else its client-port certificate (README "Running securely"). Raises TlsFileError.
    """
    cert, key, ca = tls.cert_file, tls.key_file, tls.trusted_ca_file
    p_cert, p_key, p_ca = peer_tls.cert_file, peer_tls.key_file, peer_tls.trusted_ca_file
    result = NodeTls()
    if p_cert:
        result = attrs.evolve(
            result,
            peer_server=server_context(p_cert, p_key, p_ca, require_client_cert=True, alpn=()),
            peer_client=client_context(p_ca, p_cert, p_key, alpn=()),
            peer_identity=PeerIdentity.from_config(peer_tls),
        )
    if cert:
        own_cert, own_key = (p_cert, p_key) if p_cert else (cert, key)
        result = attrs.evolve(
            result,
            client_port=server_context(cert, key, ca, require_client_cert=tls.client_cert_auth),
            node_client=client_context(ca, own_cert, own_key),
        )
    return result


def describe_handshake_error(exc: BaseException) -> str:
    """A one-line reason for a failed handshake, from the ssl error when there is one
    (stream libraries wrap it in BrokenResourceError)."""
    if type(exc).__name__ == "TooSlowError":
        return "handshake timed out"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLWantReadError | ssl.SSLWantWriteError):
            pass  # the context of a timeout or a closed connection, not the reason
        elif isinstance(seen, PeerNotAllowedError):
            return str(seen)
        elif isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        elif isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    if type(exc).__name__ in ("EndOfStream", "BrokenResourceError") and not str(exc):
        return "connection closed during the handshake"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RefusalLog:
    """Logs refused handshakes: a WARNING for the first of each (remote host, reason) per
    `interval_s`, DEBUG for repeats (a misconfigured peer redials every second)."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._log = logger
        self._interval = interval_s
        self._last: dict[tuple[str, str], float] = {}

    def refused(
        self,
        what: str,
        remote: str,
        reason: str,
        *,
        kind: str = "TLS handshake failed",
        level: int = logging.WARNING,
    ) -> None:
        """Log "refused <what> from <remote>: <kind>: <reason>" at `level` the first time
        per (host, reason) and interval, at DEBUG otherwise."""
        host = remote.rpartition(":")[0] or remote
        key = (host, f"{kind}: {reason}")
        now = time.monotonic()
        last = self._last.get(key)
        first = last is None or now - last >= self._interval
        if first:
            if len(self._last) > 1024:
                self._last.clear()  # bounded: a scan from many hosts cannot grow it forever
            self._last[key] = now
        self._log.log(
            level if first else logging.DEBUG, "refused %s from %s: %s: %s", what, remote, kind, reason
        )
