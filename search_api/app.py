"""`create_app(settings)`: the FastAPI application. Its lifespan loads the encoder and opens the store
once, unless the entry point already built them and passes them in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.errors import MedsearchError
from core.imaging.preprocess import is_reduced, model_window, rendering_from_version
from core.model.encoder import Encoder, HFEncoder
from core.reports import VocabularyError, report_analyzer
from core.settings import Settings
from search_api.docs import DOCS_PATHS, DOCS_POLICY, add_docs, declare_keys
from search_api.errors import SearchError, http_error
from search_api.routes.explain import router as explain_router
from search_api.routes.images import router as image_router
from search_api.routes.probes import router as probe_router
from search_api.routes.search import router
from search_api.schemas.search import RANDOM_MODEL_WARNING
from search_api.security.auth import AccessControl
from search_api.security.gate import LOOPBACK_HOSTS, PUBLIC, FailureLimiter, Gate, HostPolicy
from search_api.security.headers import Headers
from search_api.services.images import ImageFiles
from search_api.services.search import SearchService
from storage.access import AccessStore
from storage.errors import StorageError
from storage.layout import current_generation
from storage.opening import OpenIndex, open_index
from storage.sql.repository import Repository

logger = logging.getLogger(__name__)

DESCRIPTION = """Semantic search over an indexed medical image archive: by text or by an example image
(DICOM, PNG or JPEG). Scores are cosine similarities between SigLIP embeddings."""


class StartupError(Exception):
    """The API cannot start: unusable database, model that cannot load, or a model that differs from
    the one the index was built with."""


def build_service(settings: Settings, encoder: Encoder | None = None, index: OpenIndex | None = None) -> SearchService:
    """Open the database folder read-only and load the encoder (unless given), and check that they
    belong together."""
    from core.errors import ModelLoadError

    try:
        reports = report_analyzer(settings.report_vocabulary, settings.report_context_rules)
    except VocabularyError as exc:
        raise StartupError(str(exc)) from exc
    try:
        index = index or open_index(settings.db_dir, read_only=True, database_url=settings.database_url,
                                    reports=reports)
    except StorageError as exc:
        raise StartupError(str(exc)) from exc
    store, repository = index
    manifest = store.manifest
    model_name = settings.model
    if "model" not in settings.model_fields_set and manifest is not None:
        model_name = manifest.model_name  # default: the model the index was built with
    # the index's model rendering (ct-channels) applies to queries too: an upload is rendered as indexed
    rendering = rendering_from_version(manifest.preprocessing_version) if manifest is not None else ""
    device: str = settings.device
    if encoder is None:
        try:
            loaded = HFEncoder.load(model_name, revision=settings.model_revision, device=settings.device,
                                    local_files_only=settings.local_files_only, rendering=rendering)
        except ModelLoadError as exc:
            index.close()
            raise StartupError(str(exc)) from exc
        device, encoder = loaded.device, loaded
    elif isinstance(encoder, HFEncoder):
        encoder = encoder.for_rendering(rendering)
    if manifest is not None and manifest.fingerprint_key != encoder.fingerprint.key:
        index.close()
        raise StartupError(
            f"the index in {settings.db_dir} was built with {manifest.model_name} (fingerprint "
            f"{manifest.fingerprint_key}); the loaded model {encoder.fingerprint.name} has fingerprint "
            f"{encoder.fingerprint.key}. Serve it with the model it was built with (--model)."
        )
    render = settings.render_options()
    if model_window(rendering):
        render = replace(render, window=model_window(rendering))
    if is_reduced(rendering):  # an upload is decoded at the model's input size, as the index's images were
        render = replace(render, reduce_to=encoder.decode_side)
    files = ImageFiles(render, dicomweb=settings.dicomweb_config(),
                       max_upload_pixels=settings.max_upload_pixels, decode_slots=settings.decode_slots,
                       preview_cache_size=settings.preview_cache_size, max_file_bytes=settings.max_file_bytes)
    # counting them reads every image: not on the start-up's path, which then grows with the archive
    threading.Thread(target=warn_pending_reports, args=(repository,), name="pending-reports", daemon=True).start()
    return SearchService(encoder, store, repository, files, reports=reports, device=device,
                         text_cache_size=settings.text_cache_size,
                         review_min_probability=settings.review_min_probability,
                         review_max_entropy=settings.review_max_entropy,
                         viewer_url_template=settings.viewer_url_template,
                         request_timeout_s=settings.request_timeout_s, count_limit=settings.count_limit)


def warn_pending_reports(repository: Repository) -> None:
    """Log how many images' reports the report index lacks (written without an analyzer), if any."""
    try:
        pending = repository.reports_pending()
    except StorageError:  # the service closed before the count was done
        return
    if pending:
        logger.warning("%d images' reports are not yet in the report index (a run or `medsearch-index verify "
                       "--repair` adds them): report search does not find them", pending)


class ServiceHolder:
    """The service the routes use. Every `refresh_seconds` it picks up what indexing runs saved: a
    replaced index file, or a new index generation (then with the model that generation was built
    with), swapped in whole so that a request sees one consistent service."""

    def __init__(self, settings: Settings, service: SearchService | None, refresh_seconds: float = 1.0) -> None:
        self.settings = settings
        self.service = service
        self.refresh_seconds = refresh_seconds
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def get(self) -> SearchService:
        assert self.service is not None, "the service is built in the app's lifespan"
        if time.monotonic() - self._checked >= self.refresh_seconds and self._lock.acquire(blocking=False):
            try:
                self._refresh()
            except Exception:  # a failed refresh keeps the current service answering
                logger.exception("refreshing the index failed; still serving the previous one")
            finally:
                self._checked = time.monotonic()
                self._lock.release()
        return self.service

    def _refresh(self) -> None:
        assert self.service is not None
        store = self.service.store
        if not self.settings.db_dir.is_dir() or current_generation(self.settings.db_dir) == store.folder:
            store.refresh()
            return
        logger.info("a new index generation is complete: switching to it")
        # the new generation's own model, unless --model pinned one (then build_service checks it)
        old, self.service = self.service, build_service(self.settings)
        old.close()


# the page's own files only: no inline script, no other origin
PAGE_POLICY = ("default-src 'none'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def build_access(settings: Settings, open_mode: bool) -> AccessControl:
    """Open mode (loopback demo), or the key store of the database folder."""
    if open_mode:
        return AccessControl(store=None, open_mode=True, researcher_fields=settings.researcher_fields)
    store = AccessStore.open(settings.db_dir, settings.access_database_url)
    return AccessControl(store=store, pseudonym_secret=store.pseudonym_secret(),
                         researcher_fields=settings.researcher_fields)


def host_policy(settings: Settings, open_mode: bool) -> HostPolicy:
    """Open mode answers loopback names only; otherwise MEDSEARCH_ALLOWED_HOSTS, by default the
    loopback names and the address served on."""
    if open_mode:
        return HostPolicy(LOOPBACK_HOSTS)
    return HostPolicy(settings.allowed_hosts or [*LOOPBACK_HOSTS, settings.host])


def create_app(settings: Settings | None = None, service: SearchService | None = None,
               access: AccessControl | None = None) -> FastAPI:
    """The application. Pass `service` (encoder + store) and `access` (keys or open mode) to reuse
    what the caller built; otherwise the lifespan builds them from `settings` (keys required)."""
    settings = settings or Settings()

    holder = ServiceHolder(settings, service)
    access = access or build_access(settings, open_mode=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = holder.service is None
        if own:
            holder.service = await run_in_threadpool(build_service, settings)
        if holder.service is not None and holder.service.encoder.fingerprint.random_weights:
            app.description = f"**{RANDOM_MODEL_WARNING}**\n\n{DESCRIPTION}"
            logger.warning(RANDOM_MODEL_WARNING)
        try:
            yield
        finally:
            if own and holder.service is not None:
                holder.service.close()

    app = FastAPI(title="medsearch", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, docs_url=None,
                  redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.settings = settings
    app.state.services = holder
    app.state.access = access
    app.include_router(router)
    app.include_router(image_router)
    app.include_router(probe_router)
    app.include_router(explain_router)
    add_docs(app)
    declare_keys(app, PUBLIC)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])

    app.add_middleware(Headers, timeout_s=settings.request_timeout_s, page_policy=PAGE_POLICY,
                       docs_policy=DOCS_POLICY, docs_paths=DOCS_PATHS)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape, minus the echo of the submitted input (it may carry patient data).
        detail = [{"loc": list(err.get("loc", [])), "msg": err.get("msg", ""), "type": err.get("type", "")}
                  for err in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    async def our_error(_request: Request, exc: Exception) -> JSONResponse:
        status, body = http_error(exc)
        return JSONResponse(status_code=status, content=body)

    for root in (SearchError, MedsearchError, StorageError):  # every package's error root, mapped once
        app.add_exception_handler(root, our_error)
    app.add_middleware(Gate, access=access, hosts=host_policy(settings, access.open_mode),
                       max_upload_bytes=settings.max_upload_bytes, max_body_bytes=settings.max_body_bytes,
                       failures=FailureLimiter(settings.auth_failure_limit))
    return app
