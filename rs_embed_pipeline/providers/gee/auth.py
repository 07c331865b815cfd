"""Credentials and the ee client's process-wide initialisation of a :class:`GEEProvider`.

The provider is put together from mixins, one concern per module, each a base class of the next:
``auth.EarthEngineAuth`` (this module: the state every part shares, credentials, initialisation)
-> ``retries.RequestRetries`` (one try of a call under the shared limiter, backoff)
-> ``calls.EarthEngineCalls`` (scene queries and computePixels requests), with
``patches.PatchAssembly`` (patches and their metadata) beside them -> ``tasks.FetchTasks`` (the
task graph of one fetch) -> ``provider.GEEProvider`` (the public API). Mixins rather than
composition: every part reads and counts into the same state (counters, limiter, clock,
credentials), calls the others' methods, and the benchmarks wrap methods on ``GEEProvider``
(``GEEProvider._cut``); helper objects would each need that state handed to them and would
change those names. The attributes are declared here and set by ``GEEProvider.__init__``.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from typing import Any
from collections.abc import Callable

from ..base import ProviderError
from .client import (
    EE_CONFIG,
    EE_CONFIG_LOCK,
    EE_SCOPES,
    ComputePixelsClient,
    FetchStats,
    import_ee,
    redact,
    safe_url,
)
from .limits import RequestLimiter

log = logging.getLogger("rs_embed_pipeline.providers.gee")  # one logger for the package


class EarthEngineAuth(ABC):
    """Credentials and initialisation; the instance state every mixin shares (set by ``GEEProvider``)."""

    name: str
    project: str | None
    api_url: str | None
    use_high_volume: bool
    credentials_file: str | None
    max_concurrent_requests: int
    max_requests_per_second: float
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    request_timeout_s: float | None
    max_request_bytes: int
    max_tiles_per_request: int | None
    workload_tag: str | None
    scene_query: str
    pixel_transport: str
    rate_burst: float
    _credentials_arg: Any
    _rest: ComputePixelsClient | None
    _sensor_defaults: dict[str, Any]
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]
    _uniform: Callable[[float, float], float]
    _limiter: RequestLimiter | None
    _stats: FetchStats
    _init_lock: threading.Lock
    _credentials: Any
    _auth_kind: str | None
    _ready: bool

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """The REST endpoint (``GEEProvider.endpoint``)."""

    def _configured_auth_kind(self) -> str:
        if self._credentials_arg == "anonymous":
            return "anonymous"
        if self._credentials_arg is not None:
            return "credentials_object"
        if self.credentials_file:
            return "service_account_key_file"
        return "application_default"

    def _resolve_credentials(self) -> tuple[Any, str, str | None]:
        """(credentials, kind, project of the credentials)."""
        kind = self._configured_auth_kind()
        if kind == "anonymous":
            from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415 - Earth Engine's dependency, only when used

            return AnonymousCredentials(), kind, None
        if kind == "credentials_object":
            creds = self._credentials_arg
            return creds, kind, getattr(creds, "project_id", None)
        if kind == "service_account_key_file":
            path = str(self.credentials_file)  # set: that is what made the kind
            try:
                with open(path, encoding="utf-8") as fh:
                    info = json.load(fh)
            except (OSError, ValueError) as exc:
                raise ProviderError(
                    f"GEE provider: cannot read the service-account key file {path!r}: "
                    f"{type(exc).__name__}: {redact(exc)}"
                ) from None
            if not isinstance(info, dict) or info.get("type") != "service_account":
                raise ProviderError(f"GEE provider: {path!r} is not a service-account JSON key")
            try:
                creds = import_ee().ServiceAccountCredentials(None, key_file=path)
            except Exception as exc:
                raise ProviderError(
                    f"GEE provider: invalid service-account key {path!r}: {type(exc).__name__}: "
                    f"{redact(exc)}"
                ) from None
            return creds, kind, info.get("project_id")
        try:
            import google.auth  # noqa: PLC0415 - Earth Engine's dependency, only when used

            creds, adc_project = google.auth.default(scopes=list(EE_SCOPES))
        except Exception as exc:
            raise ProviderError(
                "GEE provider: no credentials: pass credentials_file= (service-account key) or set "
                "up Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth "
                f"application-default login`): {type(exc).__name__}: {redact(exc)}"
            ) from None
        return creds, kind, adc_project

    def _ensure_ready(self) -> None:
        with self._init_lock:
            if not self._ready:
                creds, kind, creds_project = self._resolve_credentials()
                if not self.project:
                    self.project = creds_project
                if not self.project:
                    raise ProviderError(
                        "GEE provider: no Earth Engine project: pass project= or set EE_PROJECT"
                    )
                self._credentials = creds
                self._auth_kind = kind
                self._ready = True
        ee = import_ee()
        key = (self.endpoint, self.project, id(self._credentials), self.request_timeout_s)
        with EE_CONFIG_LOCK:
            if EE_CONFIG["key"] == key:
                return
            if EE_CONFIG["active"] > 0:
                raise ProviderError(
                    "GEE provider: another GEEProvider with a different Earth Engine configuration "
                    "is fetching in this process (the ee client holds one configuration per process)"
                )
            try:
                ee.Initialize(credentials=self._credentials, url=self.endpoint, project=self.project)
                if self.request_timeout_s:  # (rebuilds the API resource: discovery, with retries)
                    ee.data.setDeadline(int(self.request_timeout_s * 1000))
                ee.data.setMaxRetries(0)  # this provider retries (with counters and backoff)
            except Exception as exc:
                EE_CONFIG["key"] = None
                raise ProviderError(
                    f"GEE provider: Earth Engine initialisation failed ({safe_url(self.endpoint)}, "
                    f"project {self.project!r}): {type(exc).__name__}: {self._redact(exc)}"
                ) from None
            self._widen_connection_pool(ee)
            EE_CONFIG["key"] = key
            log.info("Earth Engine initialised: endpoint %s, project %s, auth %s",
                     safe_url(self.endpoint), self.project, self._auth_kind)

    def _widen_connection_pool(self, ee: Any) -> None:
        """Best effort: let the client's requests session keep one connection per slot."""
        try:
            import requests.adapters  # noqa: PLC0415 - the ee client's HTTP stack, only when used

            session = ee.data._get_state().requests_session  # private; absent in old clients
            adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                                    pool_maxsize=max(10, self.max_concurrent_requests))
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        except Exception:  # pragma: no cover - the client works without it, only slower
            log.debug("could not widen the Earth Engine connection pool", exc_info=True)

    def _redact(self, text: Any) -> str:
        token = getattr(self._credentials, "token", None)
        return redact(text, [token] if isinstance(token, str) else [])
