//! Ark error answers: [`ApiError`] and the `{"error": {code, message, param, type}}` envelope.
//!
//! Handlers return an `ApiError` without knowing the request id; it travels to the HTTP
//! middleware as a response extension, and the middleware writes the envelope, whose message
//! ends with ` Request id: <id>` (the same id as the `X-Request-Id` header). `type` is the HTTP
//! reason phrase without spaces, as in every observed error (`BadRequest`, `TooManyRequests`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::rules::Refusal;
use seedq_ark::wire::{ApiErrorBody, ErrorEnvelope, TaskStatus};

/// The account id the simulator names in account-state messages.
const SIM_ACCOUNT: &str = "2100000000";

/// An Ark error answer, before the request id is known.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    /// Without the trailing request id.
    pub message: String,
    pub param: Option<String>,
    /// `Retry-After` seconds, when sent.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// 400 `InvalidParameter` for a named field.
    pub fn invalid(param: Option<&str>, detail: &str) -> Self {
        let message = match param {
            Some(p) => {
                format!("The parameter `{p}` specified in the request is not valid: {detail}.")
            }
            None => {
                format!("One or more parameters specified in the request are not valid: {detail}.")
            }
        };
        Self {
            param: param.map(str::to_string),
            ..Self::new(StatusCode::BAD_REQUEST, "InvalidParameter", message)
        }
    }

    /// The answer to a create that Ark's rules refuse (`rules.rs`).
    pub fn refused(r: &Refusal) -> Self {
        if r.code == "MissingParameter" {
            Self {
                param: Some(r.param.clone()),
                ..Self::new(
                    StatusCode::BAD_REQUEST,
                    r.code,
                    format!(
                        "The request failed because it is missing one or multiple required parameters: `{}` ({}).",
                        r.param, r.message
                    ),
                )
            }
        } else {
            Self {
                code: r.code.to_string(),
                ..Self::invalid(Some(&r.param), &r.message)
            }
        }
    }

    /// 401 for a missing or unknown API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "The API key or AK/SK in the request is missing or invalid.",
        )
    }

    /// 404 for a model the simulator was told not to accept.
    pub fn unknown_model(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "InvalidEndpointOrModel.NotFound",
                format!(
                    "The model or endpoint {model} does not exist or you do not have access to it."
                ),
            )
        }
    }

    /// 404 for an unknown (or deleted, or expired from retention) task id. The real code is
    /// not documented; `ResourceNotFound` is the simulator's choice.
    pub fn task_not_found(id: &str) -> Self {
        Self {
            param: Some("id".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                format!("The specified task {id} is not found."),
            )
        }
    }

    /// 404 for a path that is not an API route.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("The requested path {path} is not found."),
        )
    }

    /// 400 for a DELETE the task's status forbids (undocumented; see docs/ark-api.md §5).
    pub fn bad_status(id: &str, status: TaskStatus) -> Self {
        Self {
            param: Some("id".into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                format!(
                    "The task {id} cannot be cancelled or deleted in status {}.",
                    status.as_str()
                ),
            )
        }
    }

    /// 409 for a DELETE of a running task, in both regions (docs/ark-api.md §14).
    pub fn running_task_deletion(id: &str) -> Self {
        Self {
            param: Some("id".into()),
            ..Self::new(
                StatusCode::CONFLICT,
                "InvalidAction.RunningTaskDeletion",
                format!("Cannot delete task {id} because it is currently running."),
            )
        }
    }

    /// 404 `ModelNotOpen`: the account has not activated the model (docs/ark-api.md §14,
    /// "Account-state answers"; §6.2 gives the message template).
    pub fn model_not_open(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "ModelNotOpen",
                format!(
                    "Your account {SIM_ACCOUNT} has not activated the model {model}. Please activate the model service in the Ark Console."
                ),
            )
        }
    }

    /// 429 `SetLimitExceeded`: the account's own inference limit paused the model's service
    /// until its owner acts; not a rate limit that passes by itself (docs/ark-api.md §14).
    pub fn set_limit_exceeded(model: &str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "SetLimitExceeded",
            format!(
                "Your account {SIM_ACCOUNT} has reached the inference limit it set for model {model}, and the model service has been paused. To continue, raise or turn off the limit in the Ark Console."
            ),
        )
    }

    /// 429 on a read route over the account's rate (docs/ark-api.md §14 "Rate limits per endpoint").
    pub fn read_rate_limited(route: &str, qps: f64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "AccountRateLimitExceeded",
            format!(
                "The request has exceeded the account's rate limit for the {route} operation ({qps} requests per second). Please retry later."
            ),
        )
    }

    /// 429 with the given code.
    pub fn rate_limited(code: &str, message: &str, retry_after: Option<u64>) -> Self {
        Self {
            retry_after,
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// 400 `InputTextSensitiveContentDetected` (synchronous input moderation).
    pub fn input_moderation() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InputTextSensitiveContentDetected",
            "The request failed because the input text may contain sensitive information.",
        )
    }

    /// 500 `InternalServiceError` (the injected fault).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServiceError",
            "The service encountered an unexpected internal error.",
        )
    }

    /// The final response, with the request id in the message.
    pub fn render(&self, request_id: &str) -> Response {
        let kind = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .replace(' ', "");
        let body = ErrorEnvelope {
            error: ApiErrorBody {
                code: self.code.clone(),
                message: format!("{} Request id: {request_id}", self.message),
                param: Some(self.param.clone().unwrap_or_default()),
                kind: Some(kind),
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl IntoResponse for ApiError {
    /// An empty response carrying the error; the middleware renders it.
    fn into_response(self) -> Response {
        let mut resp = self.status.into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}
