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

The original error is always chained (``raise ... from e``).  This module imports only
``azure-core``; each adapter imports its own SDK.
"""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError

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
