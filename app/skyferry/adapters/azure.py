"""What the Azure adapters share: credentials and the translation of Azure's errors.

The three Azure adapters (``cosmos://`` stores, ``servicebus://`` broker, ``az://``
archive) sign in the same way: with an account key from the URL's ``key`` option, *for
tests and local use* (the Cosmos DB emulator, Azurite), or else with
``DefaultAzureCredential`` (the managed identity on Azure, which holds a data-plane role
on each resource and nothing more; the accounts have key auth disabled).

Their errors are translated by one rule (each adapter adds its service's own cases, such
as Cosmos DB's throttling or a missing blob):

* a missing resource is a ``ConfigurationError`` saying the infrastructure creates it
  (:func:`missing`);
* credentials the service refuses (401, 403) are a ``ConfigurationError`` naming the role
  the identity needs (:func:`refused`); no credentials at all (the credential chain found
  none) a ``ConfigurationError`` saying so (:func:`no_credentials`);
* a service that cannot be reached, and any other failure of the service, are a
  ``TransientError`` (:func:`unreachable`, :func:`failed`).

The original error is always chained (``raise ... from e``).

:func:`transport` is the HTTP transport of an SDK client that a process builds many of
(the Cosmos DB stores keep one client per thread): its connections share one TLS context
per certificate check, loaded once.  This module imports only ``azure-core`` and
``requests``; each adapter imports its own SDK.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any, Final

import requests.utils
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import HTTPAdapter
from urllib3.util import Retry
from urllib3.util.ssl_ import create_urllib3_context

from skyferry.core.errors import ConfigurationError, SkyferryError, TransientError


def credential(key: Any | None, *, scheme: str) -> Any:
    """``key`` (the URL's account key, in the form the SDK takes) when given, else a
    ``DefaultAzureCredential``; a ``ConfigurationError`` when ``azure-identity`` is missing."""
    if key is not None:
        return key
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as e:  # pragma: no cover - azure-identity is in the azure extra
        raise ConfigurationError(f"{scheme}:// without key= needs azure-identity (extra 'azure')") from e
    return DefaultAzureCredential()


def missing(owner: str, what: str, error: BaseException | None = None) -> ConfigurationError:
    """``owner`` (``"storage account 'a'"``) has no ``what`` (``"container 'c'"``)."""
    detail = f": {error}" if error is not None else ""
    return ConfigurationError(f"{owner} has no {what} (created by providers/azure){detail}")


def refused(service: str, what: str, grant: str, error: BaseException | None = None) -> ConfigurationError:
    """``service`` refused the credentials for ``what``; ``grant`` says which role the identity needs, where."""
    status = getattr(error, "status_code", None)
    detail = f" ({status})" if status else f" ({error})" if error is not None else ""
    return ConfigurationError(f"{service} refused the credentials for {what}{detail}: grant the identity {grant}")


def no_credentials(service: str, what: str, error: BaseException) -> ConfigurationError:
    """No credential of the chain could sign in (no managed identity, no login, no key)."""
    return ConfigurationError(f"no usable Azure credentials for {service} ({what}): {error}")


def unreachable(service: str, what: str, error: BaseException) -> TransientError:
    """The service could not be reached (DNS, connection, TLS, a response cut off)."""
    return TransientError(f"{service} unreachable during {what}: {error}")


def failed(service: str, what: str, error: BaseException) -> TransientError:
    """Any other failure of the service: worth another attempt later."""
    return TransientError(f"{service} failed {what}: {error}")


def translate(error: Exception, service: str, what: str, grant: str) -> SkyferryError | None:
    """The error for what every Azure SDK raises alike; ``None`` for anything else (the
    adapter decides: a missing resource, throttling, a conflict).

    A 401 or 403 is :func:`refused`; a ``ClientAuthenticationError`` without a status
    (the credential chain failed) is :func:`no_credentials`; a request that could not be
    sent, or whose response never came whole, is :func:`unreachable`.
    """
    if getattr(error, "status_code", None) in {401, 403}:
        return refused(service, what, grant, error)
    if isinstance(error, ClientAuthenticationError):
        return no_credentials(service, what, error)
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return unreachable(service, what, error)
    return None


def transport() -> RequestsTransport:
    """An SDK transport whose TLS connections share one context per certificate check.

    By default every new connection builds a TLS context and loads the CA certificates
    into it again, about 20 ms of CPU each: the 32 writer threads of an import open 64
    connections as they start.  Here each request's ``verify`` (``False``, ``True`` for the
    CA bundle ``requests`` ships, or a CA bundle's path or directory: the SDK's
    ``connection_verify``) picks a context from :func:`tls_context`, loaded once, and the
    check is the one ``requests`` makes: the chain against those CAs and the host name, or
    none at all for ``False``.  The environment's proxy and CA settings are not read per
    request (``use_env_settings`` off): the caller passes what they are once.
    """
    session = requests.Session()
    session.trust_env = False
    adapter = _SharedTLSAdapter(max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=True, use_env_settings=False)


class _SharedTLSAdapter(HTTPAdapter):
    """``requests``' adapter, its TLS connections made with the shared contexts of
    :func:`tls_context` (see :func:`transport`); retries are left to the SDK, as its own
    adapter does.  Both hooks are those ``requests`` documents for subclasses.  A request
    with a client certificate keeps ``requests``' own way (a context per connection): a
    certificate loaded into a shared context would go with every connection made from it."""

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if cert is not None:
            return super().build_connection_pool_key_attributes(request, verify, cert)
        verify = _verify(verify)
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":
            # the context holds the CAs already: a path left here would be loaded into it again
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = tls_context(verify)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if cert is not None:
            super().cert_verify(conn, url, verify, cert)
            return
        super().cert_verify(conn, url, _verify(verify), cert)
        conn.ca_certs = None
        conn.ca_cert_dir = None


def _verify(verify: Any) -> bool | str:
    """``requests``' ``verify`` as the three values it means: ``False`` (no check), a CA
    bundle's path, or ``True`` (anything else, ``None`` included, as a session reads it)."""
    return verify if verify is False or isinstance(verify, str) else True


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """The shared TLS context for ``verify`` (see :func:`transport`): built on first use, and
    again when a CA bundle given by path has changed since (a rotated bundle); a
    ``ConfigurationError`` when that path does not exist."""
    if verify is False:
        location, version = None, None
    else:
        location = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else verify
        try:
            stat = os.stat(location)
        except OSError as e:
            raise ConfigurationError(f"no TLS CA certificate bundle at {location!r}: {e.strerror}") from e
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    key = (location, version)
    with _CONTEXTS_LOCK:  # threads starting together build it once
        context = _CONTEXTS.get(key)
        if context is None:
            if len(_CONTEXTS) >= _MAX_CONTEXTS:
                _CONTEXTS.clear()
            context = _CONTEXTS[key] = _new_context(location)
        return context


_CONTEXTS: dict[tuple[str | None, tuple[int, int, int] | None], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()
_MAX_CONTEXTS: Final = 8


def _new_context(location: str | None) -> ssl.SSLContext:
    """A context that checks nothing (``None``), or the chain against the CAs at ``location``
    (a file or a directory) and the host name, as ``requests`` does."""
    if location is None:
        return create_urllib3_context(cert_reqs=ssl.CERT_NONE)
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)  # check_hostname on
    if os.path.isdir(location):
        context.load_verify_locations(capath=location)
    else:
        context.load_verify_locations(cafile=location)
    return context
