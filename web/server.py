"""Run the web app under uvicorn (httptools and uvloop, one process); HTTPS when `[server] tls_cert` is set."""

from __future__ import annotations

import ssl

import uvicorn

from appliance.settings import Settings, SettingsError

from .app import create_app

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context from tls_cert/tls_key (None without TLS); a clear error if they cannot be used."""
    server = settings.server
    if not server.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[server.tls_min_version]
    for key, path in (("tls_cert", server.tls_cert), ("tls_key", server.tls_key)):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise SettingsError(f"server.{key}: {path} does not exist") from None
        except OSError as exc:
            raise SettingsError(f"server.{key}: cannot read {path}: {exc.strerror} "
                                "(the user running flowfuse must be able to read it)") from None
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except ssl.SSLError as exc:
        # the message is OpenSSL's (e.g. KEY_VALUES_MISMATCH); never the key material itself
        raise SettingsError(f"server.tls_cert {server.tls_cert} and server.tls_key {server.tls_key} cannot be "
                            f"used: {exc.reason or exc} (both must be PEM, the key unencrypted and matching "
                            "the certificate)") from None
    return context


def run_web(settings: Settings, *, expect_worker: bool = False) -> None:
    context = ssl_context(settings)  # checked before the app starts: a bad certificate stops start-up
    app = create_app(settings, expect_worker=expect_worker)
    tls = {} if context is None else {"ssl_context_factory": lambda config, default: context}
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, loop="uvloop", http="httptools",
                log_level=settings.logging.level.lower(), access_log=False, lifespan="on",
                timeout_graceful_shutdown=10, **tls)
