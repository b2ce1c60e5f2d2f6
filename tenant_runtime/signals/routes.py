"""The signals page, mounted under /tenants/{tenant_id} by the control plane.

    GET  /signals                          sources (grant, refused imports), the master switch,
                                           the upload form and recent imports; for htmx, the
                                           imports partial the page polls for progress
    GET  /signals/imports/{import_id}      one import's report with its rejected rows
    POST /signals/imports                  upload an export file and import it (in the request,
                                           streamed from the spooled upload)
    POST /signals/sources                  add a source                   (sources.manage)
    POST /signals/sources/{id}/delete      remove it with what came from it (sources.manage)
    POST /signals/sources/{id}/grant       grant ingestion               (consent.manage)
    POST /signals/sources/{id}/withdraw    withdraw the grant             (consent.manage)
    POST /signals/extraction               the stakeholder-extraction master switch (consent)

Every list is filtered by the caller's persona (``scope_for``); a source or import out of scope
answers 404 like a missing one."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime import permissions
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.minimization import consent
from tenant_runtime.personas.scope import scope_for
from tenant_runtime.routing import TenantRoute
from tenant_runtime.signals import service
from tenant_runtime.signals.importers import FORMATS
from tenant_runtime.signals.schemas import EmptyForm, ExtractionForm, SourceForm, UploadForm
from tenant_runtime.signals.service import ImportRefused, ImportReport

MB = 1024 * 1024
PAGE = "signals/signals.html"


def _page(request: Request, ctx: TenantContext, *, status_code: int = 200,
          partial: str = "signals/_imports.html", **extra: object) -> Response:
    render = request.app.state.render
    role = ctx.actor.role
    with ctx.session() as s, s.begin():
        scope = scope_for(s, ctx.actor)
        imports = service.recent_imports(s, scope)
        context = {
            "sources": service.list_sources(s, scope),
            "imports": imports,
            "running": any(imp.state == "running" for imp, _ in imports),
            "extraction": consent.extraction_enabled(s),
            "kinds": service.KIND_LABELS, "formats": FORMATS,
            "scoped": not scope.unrestricted,
            "can_manage": permissions.allows(role, "sources.manage"),
            "can_consent": permissions.allows(role, "consent.manage"),
            "can_import": permissions.allows(role, "signals.import"),
            "max_mb": request.app.state.signal_upload_max_bytes // MB,
            **extra,
        }
    return render(request, PAGE, context,  # type: ignore[no-any-return]
                  status_code=status_code, partial=partial)


def signals_page(request: Request, ctx: TenantContext) -> Response:
    return _page(request, ctx)


def import_page(request: Request, ctx: TenantContext) -> Response:
    render = request.app.state.render
    with ctx.session() as s, s.begin():
        imp, source = service.access_import(s, scope_for(s, ctx.actor),
                                            int(request.path_params["import_id"]))
        report = ImportReport.of(imp, source)
    return render(request, "signals/import.html",  # type: ignore[no-any-return]
                  {"report": report}, partial="signals/_import_report.html")


def _notice(request: Request, ctx: TenantContext, notice: str) -> Response:
    return _page(request, ctx, notice=notice)


def _error(request: Request, ctx: TenantContext, status_code: int, message: str, *,
           partial: str = "signals/_imports.html", **extra: object) -> Response:
    return _page(request, ctx, status_code=status_code, partial=partial, error=message,
                 **extra)


def upload(request: Request, ctx: TenantContext) -> Response:
    form: UploadForm = request.state.form
    report_partial = "signals/_import_report.html"
    file = form.signals_file
    if not isinstance(file, UploadFile) or not (file.filename or file.size):
        return _error(request, ctx, 422, "Choose an export file to import.",
                      partial=report_partial)
    try:
        source_id = int(form.source_id)
    except ValueError:
        return _error(request, ctx, 422, "Choose the source the file comes from.",
                      partial=report_partial)
    try:
        with ctx.session() as s:
            scope = scope_for(s, ctx.actor)
        report = service.run_import(
            ctx, scope, source_id=source_id, stream=file.file,
            filename=file.filename or "upload", file_format=form.file_format.strip() or None,
            default_team=form.team, bytes_total=file.size or 0,
            max_bytes=request.app.state.signal_upload_max_bytes)
    except (ImportRefused, TenantInvalidInput) as exc:  # FileTooLarge is a 413
        return _error(request, ctx, exc.status_code, exc.message, partial=report_partial)
    status = 201 if report.state == "done" else report.status_code
    return _page(request, ctx, status_code=status, report=report, partial=report_partial)


def add_source(request: Request, ctx: TenantContext) -> Response:
    form: SourceForm = request.state.form
    try:
        with ctx.session() as s, s.begin():
            source = service.do_add_source(s, ctx, name=form.name, kind=form.kind)
            name = source.name
    except TenantInvalidInput as exc:
        return _error(request, ctx, exc.status_code, exc.message, form=form)
    return _notice(request, ctx, f"Source {name} added. Nothing is imported from it until an "
                                 "Owner grants it.")


def remove_source(request: Request, ctx: TenantContext) -> Response:
    source_id = int(request.path_params["source_id"])
    with ctx.session() as s, s.begin():
        name = service.access_source(s, scope_for(s, ctx.actor), source_id).name
        counts = service.do_remove_source(s, ctx, source_id)
    return _notice(request, ctx, f"Source {name} removed, with {counts['signals']} signals, "
                                 f"{counts['observations']} observations and "
                                 f"{counts['imports']} imports.")


def _grant(request: Request, ctx: TenantContext, granted: bool) -> Response:
    source_id = int(request.path_params["source_id"])
    with ctx.session() as s, s.begin():
        name = service.access_source(s, scope_for(s, ctx.actor), source_id).name
        change = consent.do_grant_source if granted else consent.do_withdraw_source
        changed = change(s, source_id, acting_user=ctx.actor)
    if not changed:
        return _notice(request, ctx, f"Source {name} was already "
                                     f"{'granted' if granted else 'without a grant'}.")
    return _notice(request, ctx, f"Source {name} granted: its files can be imported." if granted
                   else f"Grant of source {name} withdrawn: nothing more is imported from it.")


def grant_source(request: Request, ctx: TenantContext) -> Response:
    return _grant(request, ctx, True)


def withdraw_source(request: Request, ctx: TenantContext) -> Response:
    return _grant(request, ctx, False)


def set_extraction(request: Request, ctx: TenantContext) -> Response:
    form: ExtractionForm = request.state.form
    if form.extraction not in ("on", "off"):
        return _error(request, ctx, 422, "Stakeholder extraction is either on or off.")
    enabled = form.extraction == "on"
    with ctx.session() as s, s.begin():
        changed = consent.do_set_extraction(s, enabled=enabled, acting_user=ctx.actor)
    state = "on" if enabled else "off"
    return _notice(request, ctx, f"Stakeholder extraction is now {state}." if changed
                   else f"Stakeholder extraction was already {state}.")


routes = [
    TenantRoute("/signals", signals_page, permission="signals.view"),
    TenantRoute("/signals/imports/{import_id:int}", import_page, permission="signals.view"),
    TenantRoute("/signals/imports", upload, "POST", form=UploadForm,
                permission="signals.import"),
    TenantRoute("/signals/sources", add_source, "POST", form=SourceForm,
                permission="sources.manage"),
    TenantRoute("/signals/sources/{source_id:int}/delete", remove_source, "POST",
                form=EmptyForm, permission="sources.manage"),
    TenantRoute("/signals/sources/{source_id:int}/grant", grant_source, "POST",
                form=EmptyForm, permission="consent.manage"),
    TenantRoute("/signals/sources/{source_id:int}/withdraw", withdraw_source, "POST",
                form=EmptyForm, permission="consent.manage"),
    TenantRoute("/signals/extraction", set_extraction, "POST", form=ExtractionForm,
                permission="consent.manage"),
]
