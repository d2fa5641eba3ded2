"""Step 3 of registration: the core reaches the plugin over mutual TLS 1.3 in time."""

from __future__ import annotations

import http.client
import ssl
import time
from urllib.parse import urlsplit

from securecore.plugins.registry import Probe, ProbeResult
from securecore.tls import TLSPolicy


def mtls_probe(policy: TLSPolicy, timeout: float = 5.0) -> Probe:
    """A probe that calls ENDPOINT/healthz with the core's client certificate."""
    context = policy.client_context()

    def probe(endpoint: str) -> ProbeResult:
        url = urlsplit(endpoint)
        started = time.perf_counter()
        connection = http.client.HTTPSConnection(
            url.hostname, url.port or 443, context=context, timeout=timeout
        )
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            socket = connection.sock
            version = socket.version() if isinstance(socket, ssl.SSLSocket) else None
            cipher = socket.cipher()[0] if isinstance(socket, ssl.SSLSocket) else None
        except (OSError, ssl.SSLError, http.client.HTTPException) as error:
            return {"ok": False, "error": f"{endpoint}: {type(error).__name__}: {error}"}
        finally:
            connection.close()
        elapsed = round((time.perf_counter() - started) * 1000, 1)
        if response.status != 200:
            return {"ok": False, "error": f"{endpoint}/healthz answered {response.status}"}
        if version != "TLSv1.3":
            return {"ok": False, "error": f"{endpoint}: {version}, not TLS 1.3"}
        return {"ok": True, "ms": elapsed, "tls_version": version, "cipher": cipher}

    return probe
