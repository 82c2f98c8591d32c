"""Every gateway failure, and how each dialect spells it. docs/api.md publishes this table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, unique

from console.callers import CallerRejected, Rejection


@dataclass(frozen=True)
class Spelling:
    status: int
    openai_type: str
    openai_code: str
    cloudbase: str
    pangu: str


@unique
class Failure(Enum):
    """In the order the gateway checks them.

    CloudBase callers see only the eight codes of its table (cloudbase-ai-model-access), each failure
    the nearest one, details in the message: a missing credential is "the API key ... needed to call
    the model is missing" (AI_MODEL_CONFIG_MISSING); a wrong or insufficient one an invalid parameter of
    the call (AI_MODEL_PARAM_INVALID); every "retry later" (rate, concurrency, a starting model, an
    upstream timeout) EXCEED_CONCURRENT_REQUEST_LIMIT; an upstream or internal failure "the model
    cannot serve now, retry in a moment" (AI_MODEL_DISABLED).
    """

    # The appendix answers every X-Auth-Token and AK/SK failure with APIG.0301 ("Incorrect IAM
    # authentication information: x-auth-token not found | decrypt token fail | token expires |
    # verify aksk signature fail"), whatever the token; PANGU.0011/0012 are not what its gateway sends.
    AUTH_MISSING = Spelling(401, "invalid_request_error", "missing_api_key", "AI_MODEL_CONFIG_MISSING", "APIG.0301")
    # An unknown token (neither API key nor IAM token), an expired or revoked API key, no membership.
    AUTH_FAILED = Spelling(401, "invalid_request_error", "invalid_api_key", "AI_MODEL_PARAM_INVALID", "APIG.0301")
    # An IAM token that has expired, or an AK/SK signature that does not verify.
    IAM_AUTH_FAILED = Spelling(
        401, "invalid_request_error", "invalid_iam_credentials", "AI_MODEL_PARAM_INVALID", "APIG.0301"
    )
    # Too many password attempts for a username or from an address (console.throttle), or too many
    # password checks waiting: the appendix's flow-control code, with Retry-After.
    AUTH_THROTTLED = Spelling(
        429, "rate_limit_exceeded", "too_many_auth_attempts", "EXCEED_CONCURRENT_REQUEST_LIMIT", "APIG.0308"
    )
    FORBIDDEN = Spelling(403, "invalid_request_error", "permission_denied", "AI_MODEL_PARAM_INVALID", "PANGU.3319")
    GROUP_NOT_FOUND = Spelling(
        404, "invalid_request_error", "model_group_not_found", "AI_MODEL_NOT_FOUND", "PANGU.3254"
    )
    MODEL_REQUIRED = Spelling(400, "invalid_request_error", "model_required", "AI_MODEL_PARAM_REQUIRED", "PANGU.3278")
    MODEL_NOT_SUPPORTED = Spelling(
        404, "invalid_request_error", "model_not_found", "AI_MODEL_NOT_SUPPORTED", "PANGU.3254"
    )
    MODEL_DISABLED = Spelling(403, "invalid_request_error", "model_disabled", "AI_MODEL_DISABLED", "PANGU.3259")
    NO_INFERENCE = Spelling(400, "invalid_request_error", "model_not_supported", "AI_MODEL_NOT_SUPPORTED", "PANGU.3308")
    CONFIG_MISSING = Spelling(503, "api_error", "model_config_missing", "AI_MODEL_CONFIG_MISSING", "PANGU.0031")
    # `messages` (chat) or `prompt` (text) absent. CloudBase's AI_MODEL_PARAM_REQUIRED is documented as
    # "the required `model` parameter is missing", so a CloudBase client would look for the wrong field:
    # its "invalid parameters in the call" is the nearest honest code, the message names the field.
    PARAM_REQUIRED = Spelling(
        400, "invalid_request_error", "missing_required_parameter", "AI_MODEL_PARAM_INVALID", "PANGU.3278"
    )
    PARAM_INVALID = Spelling(400, "invalid_request_error", "invalid_parameter", "AI_MODEL_PARAM_INVALID", "PANGU.0010")
    MAX_TOKENS_INVALID = Spelling(
        400, "invalid_request_error", "invalid_parameter", "AI_MODEL_PARAM_INVALID", "PANGU.3317"
    )
    CONTENT_TOO_LONG = Spelling(
        400, "invalid_request_error", "context_length_exceeded", "AI_MODEL_PARAM_INVALID", "PANGU.3318"
    )
    N_UNARY_INVALID = Spelling(
        400, "invalid_request_error", "invalid_parameter", "AI_MODEL_PARAM_INVALID", "PANGU.3320"
    )
    N_STREAM_INVALID = Spelling(
        400, "invalid_request_error", "invalid_parameter", "AI_MODEL_PARAM_INVALID", "PANGU.3321"
    )
    # Used-up token quota is not throttling: no retry helps, so no APIG.0308 / PANGU.3267 and no
    # Retry-After. The appendix has no quota code; PANGU.3307 ("domain has not added the opened API":
    # the account is not entitled to the service) is the one whose remedy is the same, more entitlement.
    QUOTA_EXCEEDED = Spelling(429, "insufficient_quota", "insufficient_quota", "EXCEED_TOKEN_QUOTA_LIMIT", "PANGU.3307")
    CONCURRENCY_EXCEEDED = Spelling(
        429, "rate_limit_exceeded", "concurrency_limit_exceeded", "EXCEED_CONCURRENT_REQUEST_LIMIT", "APIG.0308"
    )
    RATE_EXCEEDED = Spelling(
        429, "rate_limit_exceeded", "rate_limit_exceeded", "EXCEED_CONCURRENT_REQUEST_LIMIT", "PANGU.3267"
    )
    UPSTREAM_RATE_LIMITED = Spelling(
        429, "rate_limit_exceeded", "upstream_rate_limited", "EXCEED_CONCURRENT_REQUEST_LIMIT", "APIG.0308"
    )
    UPSTREAM_TIMEOUT = Spelling(504, "api_error", "upstream_timeout", "EXCEED_CONCURRENT_REQUEST_LIMIT", "APIG.0201")
    # The upstream is starting (the embedded model server loading its weights): retry after a moment.
    MODEL_STARTING = Spelling(503, "api_error", "model_starting", "EXCEED_CONCURRENT_REQUEST_LIMIT", "PANGU.3259")
    UPSTREAM_ERROR = Spelling(502, "api_error", "upstream_error", "AI_MODEL_DISABLED", "PANGU.0031")
    # A path or method that no gateway route serves.
    NOT_FOUND = Spelling(404, "invalid_request_error", "not_found", "AI_MODEL_NOT_FOUND", "APIG.0101")
    # The body is over the limit, or not JSON: the appendix has no code of its own for either, and
    # "parameter illegal" (PANGU.0010) is what the platform answers for a request it cannot take.
    BODY_TOO_LARGE = Spelling(413, "invalid_request_error", "request_too_large", "AI_MODEL_PARAM_INVALID", "PANGU.0010")
    UNSUPPORTED_MEDIA_TYPE = Spelling(
        415, "invalid_request_error", "unsupported_media_type", "AI_MODEL_PARAM_INVALID", "PANGU.0010"
    )
    INTERNAL = Spelling(500, "api_error", "internal_error", "AI_MODEL_DISABLED", "PANGU.0001")


class GatewayError(Exception):
    """A failure to answer in the caller's dialect. `param` names the offending field, if any."""

    def __init__(
        self, failure: Failure, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.param = param
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return self.failure.value.status


_REJECTIONS = {
    Rejection.MISSING: Failure.AUTH_MISSING,
    Rejection.INVALID: Failure.AUTH_FAILED,
    Rejection.IAM_INVALID: Failure.IAM_AUTH_FAILED,
    Rejection.FORBIDDEN: Failure.FORBIDDEN,
}


# The appendix's message for APIG.0301; the reason ("token expires, expires_at:...") follows it.
IAM_AUTH_MESSAGE = "Incorrect IAM authentication information: "


def rejected(exc: CallerRejected, *, pangu: bool = False) -> GatewayError:
    """A refused caller, as the gateway's failure of the same meaning. Pangu callers read the
    manual's APIG.0301 message in front of the reason."""
    failure = _REJECTIONS[exc.reason]
    if pangu and failure.value.pangu == "APIG.0301":
        return GatewayError(failure, IAM_AUTH_MESSAGE + exc.message)
    return GatewayError(failure, exc.message)
