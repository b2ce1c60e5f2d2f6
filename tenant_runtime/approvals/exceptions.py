"""Errors of the approval gate. Each maps to one HTTP status and one sentence.

    TenantError
    ├── TenantInvalidInput                 422
    │   ├── UnknownAction                  422 no action class of that name
    │   └── ReasonRequired                 422 a rejection without a reason
    ├── TenantNotFound                     404
    │   └── RequestNotFound                404 missing, or another tenant's id
    └── ApprovalError
        ├── NotAnApprover                  403 the caller's role may not decide this request
        ├── SelfApprovalRefused            403 the requester cannot approve their own request
        └── ApprovalConflict               409
            ├── AlreadyDecided             409 decided already (by others, or by this approver)
            ├── RequestExpired             409 the request or its approval has expired
            ├── NotApproved                409 executing a request that is pending or rejected
            └── AlreadyExecuted            409 the approval was used already
"""

from __future__ import annotations

from tenant_runtime.exceptions import TenantError, TenantInvalidInput, TenantNotFound


class UnknownAction(TenantInvalidInput):
    pass


class ReasonRequired(TenantInvalidInput):
    default_message = "A rejection needs a reason."


class RequestNotFound(TenantNotFound):
    default_message = "There is no such approval request."


class ApprovalError(TenantError):
    pass


class NotAnApprover(ApprovalError):
    status_code = 403
    default_message = "Your role in this tenant may not decide this request."


class SelfApprovalRefused(ApprovalError):
    status_code = 403
    default_message = "You asked for this action, so someone else must approve it."


class ApprovalConflict(ApprovalError):
    status_code = 409
    default_message = "That conflicts with the request's current state."


class AlreadyDecided(ApprovalConflict):
    default_message = "This request has already been decided."


class RequestExpired(ApprovalConflict):
    default_message = "This request has expired; ask for the action again."


class NotApproved(ApprovalConflict):
    default_message = "This request is not approved, so the action cannot run."


class AlreadyExecuted(ApprovalConflict):
    default_message = "This approval was already used; each approval runs its action once."
