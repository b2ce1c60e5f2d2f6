"""The clusters page, mounted under /tenants/{tenant_id} by the control plane.

    GET  /signals/clusters   the recorded clusters with their measures and sources, within the
                             caller's persona (``?team=`` narrows to one team, never widens)
    POST /signals/cluster    cluster the tenant's signals into candidate tasks and show the
                             report (audited by ``clustering.do_cluster``)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime import permissions
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.minimization.observations import list_observations
from tenant_runtime.personas.scope import scope_for
from tenant_runtime.routing import TenantRoute
from tenant_runtime.signals import clustering
from tenant_runtime.signals.clustering import ClusterReport

MAX_TEAM = 100


class ClusterForm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


def _team_param(request: Request) -> str | None:
    team = request.query_params.get("team")
    if team is None or not team.strip():
        return None
    if len(team) > MAX_TEAM:
        raise TenantInvalidInput(f"A team name has at most {MAX_TEAM} characters; shorten "
                                 "the team in the address.")
    return team.strip()


def _page(request: Request, ctx: TenantContext, *, report: ClusterReport | None = None,
          status_code: int = 200) -> Response:
    render = request.app.state.render
    team = _team_param(request)
    with ctx.session() as s, s.begin():
        scope = scope_for(s, ctx.actor)
        context = {
            "clusters": clustering.visible_clusters(s, scope, team=team),
            "observations": (list_observations(s, ctx, scope, team=team)
                             if team is not None else []),
            "team": team, "report": report, "scoped": not scope.unrestricted,
            "can_cluster": permissions.allows(ctx.actor.role, "signals.import"),
            "min_task_signals": clustering.MIN_TASK_SIGNALS,
            "threshold": clustering.SIMILARITY_THRESHOLD,
        }
    return render(request, "signals/clusters.html",  # type: ignore[no-any-return]
                  context, status_code=status_code)


def clusters_page(request: Request, ctx: TenantContext) -> Response:
    return _page(request, ctx)


def run_clustering(request: Request, ctx: TenantContext) -> Response:
    with ctx.session() as s, s.begin():
        report = clustering.do_cluster(s, ctx, actor=ctx.actor)
    return _page(request, ctx, report=report)


routes = [
    TenantRoute("/signals/clusters", clusters_page, permission="signals.view"),
    TenantRoute("/signals/cluster", run_clustering, "POST", form=ClusterForm,
                permission="signals.import"),
]
