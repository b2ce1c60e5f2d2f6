"""SCIM 2.0 over HTTP at ``/scim/v2``: Users, Groups, and the discovery documents
(ServiceProviderConfig, ResourceTypes, Schemas). Bodies are parsed into scim2-models' resource
models (the enterprise User extension accepted), so what Entra ID and Okta send is read by one
maintained implementation of RFC 7643; PATCH operations are applied by scim2-models'
``PatchOp.patch`` to the current resource, and the result written back through the service.

Every request is authenticated by a SCIM token (``service.authenticate``), never a session:
``/scim/`` is CSRF-exempt only for requests that present a bearer credential or no session
(``control_plane/web/security.py``). Answers are ``application/scim+json``; errors are SCIM
Error objects with one sentence."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from scim2_models import (
    Context,
    Email,
    EnterpriseUser,
    Group,
    GroupMember,
    PatchOp,
    ResourceType,
    SearchRequest,
    User,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.scim import service
from control_plane.scim.service import GroupFields, ScimError, UserFields
from control_plane.web.services import services
from tenant_runtime.text import first_unstorable

MEDIA_TYPE = "application/scim+json"
MAX_BODY = 1024 * 1024
PREFIX = "/scim/v2"
FullUser = User[EnterpriseUser]


def _json(status: int, body: dict[str, Any] | None, *, etag: str | None = None,
          location: str | None = None) -> Response:
    headers = {}
    if etag:
        headers["ETag"] = etag
    if location:
        headers["Location"] = location
    content = b"" if body is None else json.dumps(body).encode()
    return Response(content, status_code=status, media_type=MEDIA_TYPE if body is not None
                    else None, headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (MEDIA_TYPE, "application/json"):
        raise ScimError(415, "Send the body as application/scim+json.")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ScimError(413, "The body is over 1 MiB.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ScimError(400, "The body is not valid JSON.", "invalidSyntax") from None
    if not isinstance(body, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    if first_unstorable(body) is not None:
        raise ScimError(400, "The body holds a control character or text that cannot be "
                             "stored.", "invalidValue")
    return body


Handler = Callable[..., Response]


def scim_endpoint(handler: Handler, *, reads_body: bool = False) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        try:
            body = await _body(request) if reads_body else None
        except ScimError as exc:
            return _json(exc.status, exc.body())
        return await run_in_threadpool(_run, handler, request, body)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _run(handler: Handler, request: Request, body: dict[str, Any] | None) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            token = service.authenticate(s, request.headers.get("authorization"))
            return handler(request, s, token, body)
    except ScimError as exc:
        return _json(exc.status, exc.body())


ALWAYS = {"id", "schemas", "meta"}


def _pick(resource: dict[str, Any], attributes: str | list[str] | None,
          excluded: str | list[str] | None) -> dict[str, Any]:
    """``attributes`` / ``excludedAttributes`` (RFC 7644 section 3.4.2.5), by top-level
    attribute (a sub-attribute names its parent); ``id`` and ``schemas`` always stay."""
    def names(value: str | list[str] | None) -> set[str]:
        items = value.split(",") if isinstance(value, str) else value or []
        out = set()
        for item in items:
            name = item.strip().rsplit(":", 1)[-1] if item.strip().startswith("urn:") \
                else item.strip()
            out.add(name.split(".")[0].lower())
        return out - {""}

    wanted, dropped = names(attributes), names(excluded)
    picked = {}
    for key, value in resource.items():
        lowered = key.lower()
        if lowered in ALWAYS or ((not wanted or lowered in wanted) and lowered not in dropped):
            picked[key] = value
    return picked


def _picked(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    params = request.query_params
    attributes, excluded = params.get("attributes"), params.get("excludedAttributes")
    if not attributes and not excluded:
        return body
    if "Resources" in body:
        return {**body, "Resources": [_pick(r, attributes, excluded)
                                      for r in body["Resources"]]}
    return _pick(body, attributes, excluded)


def _base(request: Request) -> str:
    return services(request).settings.public_origin + PREFIX


def _invalid(exc: ValidationError) -> ScimError:
    errors = exc.errors()
    where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
    what = str(errors[0]["msg"])[:200] if errors else "invalid"
    return ScimError(400, f"The body is not a valid SCIM resource ({where or 'body'}: "
                          f"{what}).", "invalidValue")


# ------------------------------------------------------------------------------- Users


def _user_fields(body: dict[str, Any], context: Context) -> UserFields:
    try:
        user = FullUser.model_validate(body, scim_ctx=context)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if not user.user_name:
        raise ScimError(400, "userName is required.", "invalidValue")
    return UserFields(user.user_name, user.display_name,
                      True if user.active is None else bool(user.active), user.external_id,
                      _emails(user), _email_items(user))


def _email_items(user: User[Any]) -> list[dict[str, Any]]:
    items = []
    for email in (user.emails or [])[:20]:
        if email.value:
            item: dict[str, Any] = {"value": str(email.value)}
            if email.type is not None:
                item["type"] = str(email.type.value if hasattr(email.type, "value")
                                   else email.type)
            if email.primary is not None:
                item["primary"] = bool(email.primary)
            items.append(item)
    return items


def _emails(user: User[Any]) -> list[str]:
    found = sorted(user.emails or [], key=lambda e: not e.primary)
    return [str(e.value) for e in found if e.value]


def users(request: Request, s: Any, token: Any, body: Any) -> Response:
    params = request.query_params
    start, count = service.page(params.get("startIndex"), params.get("count"))
    return _json(200, _picked(request, service.list_users(
        s, token, filter_text=params.get("filter"), start=start, count=count,
        base=_base(request), sort=(params.get("sortBy"), params.get("sortOrder")))))


def _sort_of(search: Any) -> tuple[str | None, str | None]:
    order = search.sort_order
    return (None if search.sort_by is None else str(search.sort_by),
            None if order is None else str(getattr(order, "value", order)))


def _search(body: dict[str, Any]) -> tuple[Any, str | None, int, int]:
    """A POST .search body (RFC 7644 section 3.4.3): its filter and page."""
    try:
        search: Any = SearchRequest.model_validate(body, scim_ctx=Context.SEARCH_REQUEST)
    except ValidationError as exc:
        raise _invalid(exc) from None
    start, count = service.page(str(search.start_index or 1),
                                None if search.count is None else str(search.count))
    return search, (None if search.filter is None else str(search.filter)), start, count


def _search_picked(search: Any, body: dict[str, Any]) -> dict[str, Any]:
    attributes = [str(a) for a in search.attributes or []]
    excluded = [str(a) for a in search.excluded_attributes or []]
    if not attributes and not excluded:
        return body
    return {**body, "Resources": [_pick(r, attributes, excluded) for r in body["Resources"]]}


def search_users(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    search, filter_text, start, count = _search(body)
    return _json(200, _search_picked(search, service.list_users(
        s, token, filter_text=filter_text, start=start, count=count, base=_base(request),
        sort=_sort_of(search))))


def search_groups(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    search, filter_text, start, count = _search(body)
    return _json(200, _search_picked(search, service.list_groups(
        s, token, filter_text=filter_text, start=start, count=count, base=_base(request),
        sort=_sort_of(search))))


def create_user(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    fields = _user_fields(body, Context.RESOURCE_CREATION_REQUEST)
    resource = service.do_create_user(s, token, fields, base=_base(request))
    return _json(201, resource, etag=resource["meta"]["version"],
                 location=resource["meta"]["location"])


def get_user(request: Request, s: Any, token: Any, body: Any) -> Response:
    user, link = service.access_user(s, token, request.path_params["user_id"])
    resource = service.user_resource(user, link, _base(request))
    return _json(200, _picked(request, resource), etag=resource["meta"]["version"])


def replace_user(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    user, link = service.access_user(s, token, request.path_params["user_id"], lock=True)
    service.check_if_match(request.headers.get("if-match"),
                           service.user_resource(user, link, _base(request)))
    fields = _user_fields(body, Context.RESOURCE_REPLACEMENT_REQUEST)
    resource = service.do_update_user(s, token, user, link, fields, base=_base(request))
    return _json(200, resource, etag=resource["meta"]["version"])


def patch_user(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    user, link = service.access_user(s, token, request.path_params["user_id"], lock=True)
    current = service.user_resource(user, link, _base(request))
    service.check_if_match(request.headers.get("if-match"), current)
    resource = FullUser(id=str(user.id), user_name=link.user_name,
                        display_name=user.display_name, active=user.is_active,
                        external_id=link.external_id,
                        emails=[Email.model_validate(e) for e in link.emails] or (
                            None if service.is_placeholder(user.email) else
                            [Email(value=user.email, primary=True, type=Email.Type.work)]))
    try:
        operations = PatchOp[FullUser].model_validate(_entra_booleans(body),
                                                      scim_ctx=Context.RESOURCE_PATCH_REQUEST)
        operations.patch(resource)
    except ValidationError as exc:
        raise _invalid(exc) from None
    except Exception as exc:  # scim2-models' SCIMException: a path or value it refuses
        raise ScimError(400, f"The patch cannot be applied: {str(exc)[:200]}",
                        "invalidPath") from None
    fields = UserFields(resource.user_name or link.user_name, resource.display_name,
                        True if resource.active is None else bool(resource.active),
                        resource.external_id, _emails(resource) or [user.email],
                        _email_items(resource))
    result = service.do_update_user(s, token, user, link, fields, base=_base(request))
    return _json(200, result, etag=result["meta"]["version"])


def _entra_booleans(body: dict[str, Any]) -> dict[str, Any]:
    """Entra ID sends ``"value": "False"`` for a boolean attribute: read as the boolean."""
    for operation in body.get("Operations") or []:
        if isinstance(operation, dict) and isinstance(operation.get("value"), str) \
                and str(operation.get("path", "")).lower() == "active" \
                and operation["value"].lower() in ("true", "false"):
            operation["value"] = operation["value"].lower() == "true"
    return body


def delete_user(request: Request, s: Any, token: Any, body: Any) -> Response:
    user, link = service.access_user(s, token, request.path_params["user_id"], lock=True)
    service.check_if_match(request.headers.get("if-match"),
                           service.user_resource(user, link, _base(request)))
    service.do_delete_user(s, token, user, link)
    return _json(204, None)


# ------------------------------------------------------------------------------- Groups


def _group_fields(body: dict[str, Any], context: Context) -> GroupFields:
    try:
        group = Group.model_validate(body, scim_ctx=context)
    except ValidationError as exc:
        raise _invalid(exc) from None
    members = None if group.members is None else [m.value or "" for m in group.members]
    return GroupFields(group.display_name or "", group.external_id, members)


def groups(request: Request, s: Any, token: Any, body: Any) -> Response:
    params = request.query_params
    start, count = service.page(params.get("startIndex"), params.get("count"))
    return _json(200, _picked(request, service.list_groups(
        s, token, filter_text=params.get("filter"), start=start, count=count,
        base=_base(request), sort=(params.get("sortBy"), params.get("sortOrder")))))


def create_group(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    fields = _group_fields(body, Context.RESOURCE_CREATION_REQUEST)
    resource = service.do_create_group(s, token, fields, base=_base(request))
    return _json(201, resource, etag=resource["meta"]["version"],
                 location=resource["meta"]["location"])


def get_group(request: Request, s: Any, token: Any, body: Any) -> Response:
    group = service.access_group(s, token, request.path_params["group_id"])
    resource = service.group_resource(s, group, _base(request))
    return _json(200, _picked(request, resource), etag=resource["meta"]["version"])


def replace_group(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    group = service.access_group(s, token, request.path_params["group_id"], lock=True)
    service.check_if_match(request.headers.get("if-match"),
                           service.group_resource(s, group, _base(request)))
    fields = _group_fields(body, Context.RESOURCE_REPLACEMENT_REQUEST)
    if fields.member_ids is None:
        fields.member_ids = []  # a PUT replaces: no members given is no members
    resource = service.do_update_group(s, token, group, fields, base=_base(request))
    return _json(200, resource, etag=resource["meta"]["version"])


def _entra_member_removals(body: dict[str, Any]) -> dict[str, Any]:
    """Entra ID removes members with ``path: members`` and a value list; RFC 7644 section
    3.5.2.2 writes that as a filter in the path. Rewrite it so, one operation per member."""
    operations = []
    for operation in body.get("Operations") or []:
        if (isinstance(operation, dict) and str(operation.get("op", "")).lower() == "remove"
                and str(operation.get("path", "")).lower() == "members"
                and isinstance(operation.get("value"), list)):
            for member in operation["value"]:
                value = member.get("value") if isinstance(member, dict) else None
                if not isinstance(value, str) or '"' in value or "\\" in value:
                    raise ScimError(400, "A member to remove names no user id.",
                                    "invalidValue")
                operations.append({"op": "remove", "path": f'members[value eq "{value}"]'})
        else:
            operations.append(operation)
    return {**body, "Operations": operations}


def patch_group(request: Request, s: Any, token: Any, body: dict[str, Any]) -> Response:
    group = service.access_group(s, token, request.path_params["group_id"], lock=True)
    current = service.group_resource(s, group, _base(request))
    service.check_if_match(request.headers.get("if-match"), current)
    resource = Group(id=str(group.id), display_name=group.display_name,
                     external_id=group.external_id,
                     members=[GroupMember(value=m["value"], ref=None, type=None)
                              for m in current["members"]])
    try:
        operations = PatchOp[Group].model_validate(_entra_member_removals(body),
                                                   scim_ctx=Context.RESOURCE_PATCH_REQUEST)
        operations.patch(resource)
    except ValidationError as exc:
        raise _invalid(exc) from None
    except ScimError:
        raise
    except Exception as exc:  # scim2-models' SCIMException
        raise ScimError(400, f"The patch cannot be applied: {str(exc)[:200]}",
                        "invalidPath") from None
    members = sorted({m.value for m in resource.members or [] if m.value})
    fields = GroupFields(resource.display_name or group.display_name, resource.external_id,
                         members)
    result = service.do_update_group(s, token, group, fields, base=_base(request))
    return _json(200, result, etag=result["meta"]["version"])


def delete_group(request: Request, s: Any, token: Any, body: Any) -> Response:
    group = service.access_group(s, token, request.path_params["group_id"], lock=True)
    service.check_if_match(request.headers.get("if-match"),
                           service.group_resource(s, group, _base(request)))
    service.do_delete_group(s, token, group)
    return _json(204, None)


# ------------------------------------------------------------------------------- discovery


def service_provider_config(request: Request, s: Any, token: Any, body: Any) -> Response:
    return _json(200, {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": services(request).settings.public_origin + "/sso",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": service.MAX_COUNT},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [{
            "type": "oauthbearertoken", "name": "SCIM token",
            "description": "A bearer token an Owner creates on the single sign-on page.",
            "primary": True}],
        "meta": {"resourceType": "ServiceProviderConfig",
                 "location": _base(request) + "/ServiceProviderConfig"},
    })


def _resource_types(request: Request) -> list[dict[str, Any]]:
    out = []
    for model in (User, Group):
        body = ResourceType.from_resource(model).model_dump(
            scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        body["meta"] = {"resourceType": "ResourceType",
                        "location": f"{_base(request)}/ResourceTypes/{body['id']}"}
        out.append(body)
    return out


# what Magistrate keeps of a person and a group: the published schemas name only these, so a
# client knows the rest (phone numbers, addresses, the enterprise extension, ...) is not stored
SUPPORTED = {"urn:ietf:params:scim:schemas:core:2.0:User":
             {"userName", "displayName", "active", "emails"},
             "urn:ietf:params:scim:schemas:core:2.0:Group": {"displayName", "members"}}
EMAIL_PARTS = {"value", "type", "primary"}


def _trimmed(body: dict[str, Any]) -> dict[str, Any]:
    kept = SUPPORTED[body["id"]]
    attributes = [a for a in body.get("attributes", []) if a.get("name") in kept]
    for attribute in attributes:
        if attribute["name"] == "emails":
            attribute["subAttributes"] = [a for a in attribute.get("subAttributes", [])
                                          if a.get("name") in EMAIL_PARTS]
    return {**body, "attributes": attributes}


def _schemas(request: Request) -> list[dict[str, Any]]:
    out = []
    for model in (User, Group):
        body = _trimmed(model.to_schema().model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
        body["meta"] = {"resourceType": "Schema",
                        "location": f"{_base(request)}/Schemas/{body['id']}"}
        out.append(body)
    return out


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": len(items), "startIndex": 1, "itemsPerPage": len(items),
            "Resources": items}


def resource_types(request: Request, s: Any, token: Any, body: Any) -> Response:
    return _json(200, _listing(_resource_types(request)))


def resource_type(request: Request, s: Any, token: Any, body: Any) -> Response:
    for item in _resource_types(request):
        if item["id"] == request.path_params["name"]:
            return _json(200, item)
    raise ScimError(404, "No such resource type.")


def schemas(request: Request, s: Any, token: Any, body: Any) -> Response:
    return _json(200, _listing(_schemas(request)))


def schema(request: Request, s: Any, token: Any, body: Any) -> Response:
    for item in _schemas(request):
        if item["id"] == request.path_params["name"]:
            return _json(200, item)
    raise ScimError(404, "No such schema.")


# what each address under /scim/v2 takes: another method there is a 405, not a 404
METHODS = {("ServiceProviderConfig",): {"GET"}, ("ResourceTypes",): {"GET"},
           ("ResourceTypes", "*"): {"GET"}, ("Schemas",): {"GET"}, ("Schemas", "*"): {"GET"},
           ("Users",): {"GET", "POST"}, ("Users", "*"): {"GET", "PUT", "PATCH", "DELETE"},
           ("Groups",): {"GET", "POST"}, ("Groups", "*"): {"GET", "PUT", "PATCH", "DELETE"}}


def unknown(request: Request, s: Any, token: Any, body: Any) -> Response:
    parts = tuple(request.path_params["rest"].strip("/").split("/"))
    if parts == (".search",) and request.method == "POST":
        raise ScimError(501, "Search one resource type at a time: POST /Users/.search or "
                             "/Groups/.search.")
    shape = parts[:1] + ("*",) * (len(parts) - 1)
    allowed = METHODS.get(shape)
    if allowed is not None and request.method not in allowed:
        raise ScimError(405, f"{request.method} is not allowed here; use "
                             f"{', '.join(sorted(allowed))}.")
    raise ScimError(404, "There is no SCIM resource at this address.")


routes = [
    Route(f"{PREFIX}/Users", scim_endpoint(users), methods=["GET"]),
    Route(f"{PREFIX}/Users", scim_endpoint(create_user, reads_body=True), methods=["POST"]),
    Route(f"{PREFIX}/Users/.search", scim_endpoint(search_users, reads_body=True),
          methods=["POST"]),
    Route(f"{PREFIX}/Users/{{user_id}}", scim_endpoint(get_user), methods=["GET"]),
    Route(f"{PREFIX}/Users/{{user_id}}", scim_endpoint(replace_user, reads_body=True),
          methods=["PUT"]),
    Route(f"{PREFIX}/Users/{{user_id}}", scim_endpoint(patch_user, reads_body=True),
          methods=["PATCH"]),
    Route(f"{PREFIX}/Users/{{user_id}}", scim_endpoint(delete_user), methods=["DELETE"]),
    Route(f"{PREFIX}/Groups", scim_endpoint(groups), methods=["GET"]),
    Route(f"{PREFIX}/Groups", scim_endpoint(create_group, reads_body=True), methods=["POST"]),
    Route(f"{PREFIX}/Groups/.search", scim_endpoint(search_groups, reads_body=True),
          methods=["POST"]),
    Route(f"{PREFIX}/Groups/{{group_id}}", scim_endpoint(get_group), methods=["GET"]),
    Route(f"{PREFIX}/Groups/{{group_id}}", scim_endpoint(replace_group, reads_body=True),
          methods=["PUT"]),
    Route(f"{PREFIX}/Groups/{{group_id}}", scim_endpoint(patch_group, reads_body=True),
          methods=["PATCH"]),
    Route(f"{PREFIX}/Groups/{{group_id}}", scim_endpoint(delete_group), methods=["DELETE"]),
    Route(f"{PREFIX}/ServiceProviderConfig", scim_endpoint(service_provider_config),
          methods=["GET"]),
    Route(f"{PREFIX}/ResourceTypes", scim_endpoint(resource_types), methods=["GET"]),
    Route(f"{PREFIX}/ResourceTypes/{{name}}", scim_endpoint(resource_type), methods=["GET"]),
    Route(f"{PREFIX}/Schemas", scim_endpoint(schemas), methods=["GET"]),
    Route(f"{PREFIX}/Schemas/{{name}}", scim_endpoint(schema), methods=["GET"]),
    # anything else under /scim/v2 answers a SCIM error, not the dashboard's page
    Route(f"{PREFIX}/{{rest:path}}", scim_endpoint(unknown),
          methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
]
