"""
TLS served by the daemon itself: a certificate chain and key read from PEM
files (a Let's Encrypt `fullchain.pem` + `privkey.pem` as they are), re-read
on SIGHUP or when the files change, so that renewals need no restart.  New
handshakes use the new certificate; connections already open keep theirs.
"""

from __future__ import annotations

import os
import re
import signal
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.application import service
from twisted.internet import ssl, task
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.DOTALL)


class CertificateError(Exception):
    """The certificate or key files cannot be used; the message says which and why."""


def load_options(cert_path: str, key_path: str) -> tuple[ssl.CertificateOptions, x509.Certificate, int]:
    """CertificateOptions serving the leaf and every chain certificate of `cert_path`."""
    try:
        with open(cert_path, "rb") as f:
            chain_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {e.filename}: {e.strerror}") from e
    blocks = [match.group(0) for match in PEM_CERTIFICATE.finditer(chain_pem)]
    if not blocks:
        raise CertificateError(f"{cert_path} holds no PEM certificate (expected a fullchain.pem)")
    try:
        certificates = [x509.load_pem_x509_certificate(block) for block in blocks]
        key = serialization.load_pem_private_key(key_pem, password=None)
        options = ssl.CertificateOptions(privateKey=key, certificate=certificates[0],
                                         extraCertChain=certificates[1:])
        options.getContext()
    except Exception as e:
        raise CertificateError(f"{cert_path} with {key_path}: {e or type(e).__name__} "
                               "(is the key the one of the first certificate?)") from e
    return options, certificates[0], len(blocks)


def describe_certificate(certificate: x509.Certificate, chain_length: int) -> dict:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return {"subject": names[0].value if names else certificate.subject.rfc4514_string(),
            "not-after": certificate.not_valid_after_utc.isoformat(),
            "days-left": (certificate.not_valid_after_utc - datetime.now(timezone.utc)).days,
            "chain": chain_length}


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingCertificate(service.Service):
    """
    The TLS connection creator for our listeners.  Each handshake asks it for
    a connection, so swapping `options` changes only the handshakes to come.
    """

    _log = Logger()

    def __init__(self, cert_path: str, key_path: str, clock, check_interval: float):
        self.cert_path = cert_path
        self.key_path = key_path
        self.clock = clock
        self.check_interval = check_interval
        self.options, self.certificate, self.chain_length = load_options(cert_path, key_path)
        self._warn_if_expiring()
        self._stamp = self._file_stamp()
        self._loop = None
        self._previous_sighup = None

    def serverConnectionForTLS(self, tls_protocol):
        return self.options.serverConnectionForTLS(tls_protocol)

    def _file_stamp(self):
        """What changes when certbot (or anyone) replaces or rewrites either file."""
        stamp = []
        for path in (self.cert_path, self.key_path):
            try:
                st = os.stat(path)
            except OSError:
                return None
            stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    def reload(self, why: str) -> bool:
        """Re-read both files; on any error keep serving the certificate we have."""
        try:
            options, certificate, chain_length = load_options(self.cert_path, self.key_path)
        except CertificateError as e:
            self._log.error("TLS certificate not reloaded ({why}): {error}; still serving {subject}",
                            why=why, error=e, subject=self.describe()["subject"])
            return False
        self.options, self.certificate, self.chain_length = options, certificate, chain_length
        info = self.describe()
        self._log.info("TLS certificate reloaded ({why}): {subject}, chain of {chain}, valid until {not_after}",
                       why=why, subject=info["subject"], chain=chain_length, not_after=info["not-after"])
        self._warn_if_expiring()
        return True

    def _warn_if_expiring(self):
        info = self.describe()
        if info["days-left"] < 0:
            self._log.error("TLS certificate {subject} in {cert} expired on {not_after}: clients will refuse it; "
                            "renew it (certbot renew)", subject=info["subject"], cert=self.cert_path,
                            not_after=info["not-after"])
        elif info["days-left"] < 14:
            self._log.warn("TLS certificate {subject} in {cert} expires in {days} days: renew it",
                           subject=info["subject"], cert=self.cert_path, days=info["days-left"])

    def describe(self) -> dict:
        """The served certificate, for `status`."""
        return dict(describe_certificate(self.certificate, self.chain_length), cert=self.cert_path)

    def check_files(self):
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            self.reload("files changed")

    def _on_sighup(self, signum, frame):
        # Only hand over to the reactor here: no work in a signal handler.  twistd
        # rotates its log on SIGUSR1, not SIGHUP; any handler installed before ours
        # still runs.
        self.clock.callFromThread(self.reload, "SIGHUP")
        if callable(self._previous_sighup):
            self._previous_sighup(signum, frame)

    def startService(self):
        super().startService()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        if self.check_interval > 0:
            self._loop = task.LoopingCall(self.check_files)
            self._loop.clock = self.clock
            self._loop.start(self.check_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
