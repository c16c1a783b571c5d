//! The four Ark routes under `/api/v3/contents/generations/tasks`.
//!
//! Create parses the body itself rather than through `axum::Json`, so that every way a body
//! can be wrong becomes the Ark answer (400 `InvalidParameter`, with `param` when the field can
//! be told) and never axum's plain-text 415/422. Validation is the simulator's own reading of
//! Ark's rules (`rules.rs`); this module only maps its verdict onto HTTP.
//! Auth, request ids and injected 500s happen in the middleware (`http.rs`) before these run.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::http::{ConnTag, Dropped, MAX_BODY};
use super::rules;
use super::state::{ListQuery, Sim};
use seedq_ark::wire::{
    ContentItem, CreateTaskRequest, CreateTaskResponse, ListTasksResponse, TaskStatus,
};

/// `page_size` when none is given (docs/ark-api.md §14: 20).
const DEFAULT_PAGE_SIZE: usize = 20;
/// Upper bound of `page_num` and `page_size`.
const MAX_PAGE: usize = 500;

/// `POST …/tasks`.
pub async fn create(
    State(sim): State<Arc<Sim>>,
    ConnectInfo(conn): ConnectInfo<ConnTag>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::invalid(None, "the request body is larger than 64 MB"))?;
    let (req, value) = parse_create(&bytes)?;

    if !req.model.is_empty()
        && !sim.cfg.accept_unknown_models
        && sim.catalogue.get(&req.model).is_none()
    {
        return Err(ApiError::unknown_model(&req.model));
    }
    let eff = rules::judge(&req, &sim.catalogue).map_err(|r| ApiError::refused(&r))?;
    let words = sim.faults().input_moderation_words;
    let prompt = eff.prompt.to_lowercase();
    if words
        .iter()
        .any(|w| !w.is_empty() && prompt.contains(&w.to_lowercase()))
    {
        return Err(ApiError::input_moderation());
    }
    let safety_identifier = req.safety_identifier.clone();
    let created = sim.create(req, value, eff)?;
    if created.drop_connection {
        tracing::info!(task = %created.id, remote = %conn.remote, "sim: dropping the connection after create");
    } else {
        // The task exists from here on, whatever the client hears: the dangerous real cases.
        let after = sim.faults().latency_after_create_ms;
        if after > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(after)).await;
        }
        if sim.roll(|f| f.error_after_create_rate) {
            tracing::info!(task = %created.id, "sim: answering 500 after creating the task");
            return Err(ApiError::internal());
        }
    }
    let mut resp = Json(CreateTaskResponse {
        id: created.id,
        safety_identifier,
    })
    .into_response();
    if created.drop_connection {
        conn.kill.kill();
        resp.extensions_mut().insert(Dropped);
    }
    Ok(resp)
}

/// Parses a create body; JSON `null` anywhere at the top level counts as absent.
fn parse_create(bytes: &Bytes) -> Result<(CreateTaskRequest, serde_json::Value), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(None, &format!("the request body is not valid JSON ({e})"))
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    };
    let mut stripped = obj.clone();
    stripped.retain(|_, v| !v.is_null());
    let req: CreateTaskRequest =
        match serde_json::from_value(serde_json::Value::Object(stripped.clone())) {
            Ok(r) => r,
            Err(e) => {
                let param = culprit(&stripped);
                return Err(ApiError::invalid(param.as_deref(), &format!("{e}")));
            }
        };
    Ok((req, value))
}

/// Finds the field that broke deserialisation, by trying each one alone.
fn culprit(obj: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    for (k, v) in obj {
        if k == "content"
            && let Some(items) = v.as_array()
        {
            for (i, item) in items.iter().enumerate() {
                if serde_json::from_value::<ContentItem>(item.clone()).is_err() {
                    return Some(format!("content[{i}]"));
                }
            }
        }
        let mut one = serde_json::Map::new();
        one.insert(k.clone(), v.clone());
        if serde_json::from_value::<CreateTaskRequest>(serde_json::Value::Object(one)).is_err() {
            return Some(k.clone());
        }
    }
    None
}

/// `GET …/tasks/{id}`.
pub async fn get(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match sim.get(&id) {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::task_not_found(&id)),
    }
}

/// `GET …/tasks?page_num&page_size&filter.status&filter.task_ids…&filter.model&filter.service_tier`.
pub async fn list(
    State(sim): State<Arc<Sim>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_list_query(query.as_deref().unwrap_or(""))?;
    let (total, items) = sim.list(&q);
    Ok(Json(ListTasksResponse { total, items }).into_response())
}

/// Parses the raw query: `filter.task_ids` repeats, which serde_urlencoded cannot collect.
fn parse_list_query(raw: &str) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        page_num: 1,
        page_size: DEFAULT_PAGE_SIZE,
        ..ListQuery::default()
    };
    let page = |k: &str, v: &str| -> Result<usize, ApiError> {
        v.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    Some(k),
                    &format!("{v} is not an integer in [1, {MAX_PAGE}]"),
                )
            })
    };
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "page_num" => q.page_num = page("page_num", &v)?,
            "page_size" => q.page_size = page("page_size", &v)?,
            "filter.status" => {
                let s: TaskStatus = serde_json::from_value(serde_json::Value::String(v.to_string()))
                    .ok()
                    .filter(|s| *s != TaskStatus::Unknown)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            Some("filter.status"),
                            &format!("{v} is not one of queued, running, cancelled, succeeded, failed, expired"),
                        )
                    })?;
                q.status = Some(s);
            }
            "filter.task_ids" => {
                // Tolerate comma-joined ids too; real ids never contain commas.
                q.task_ids
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string));
            }
            "filter.model" => q.model = Some(v.into_owned()),
            "filter.service_tier" => {
                if v != "default" && v != "flex" {
                    return Err(ApiError::invalid(
                        Some("filter.service_tier"),
                        &format!("{v} is not one of default, flex"),
                    ));
                }
                q.service_tier = Some(v.into_owned());
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `DELETE …/tasks/{id}`: `{}` on success.
pub async fn delete(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    sim.delete(&id)?;
    Ok(Json(serde_json::json!({})).into_response())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn list_query_collects_repeated_ids() {
        let q = parse_list_query(
            "page_size=3&filter.task_ids=a&filter.task_ids=b&filter.status=queued",
        )
        .expect("parses");
        assert_eq!(q.task_ids, vec!["a", "b"]);
        assert_eq!(q.page_size, 3);
        assert_eq!(q.page_num, 1);
        assert_eq!(q.status, Some(TaskStatus::Queued));
        let e = parse_list_query("page_size=501")
            .err()
            .and_then(|e| e.param);
        assert_eq!(e.as_deref(), Some("page_size"));
        let e = parse_list_query("filter.status=paused")
            .err()
            .and_then(|e| e.param);
        assert_eq!(e.as_deref(), Some("filter.status"));
    }

    #[test]
    fn type_errors_name_the_field() {
        let body = Bytes::from_static(
            br#"{"model":"m","content":[{"type":"text","text":"a"}],"duration":"five"}"#,
        );
        let e = parse_create(&body).err().and_then(|e| e.param);
        assert_eq!(e.as_deref(), Some("duration"));
        let body = Bytes::from_static(
            br#"{"model":"m","content":[{"type":"text","text":"a"},{"type":"image_url"}]}"#,
        );
        let e = parse_create(&body).err().and_then(|e| e.param);
        assert_eq!(e.as_deref(), Some("content[1]"));
        let body = Bytes::from_static(br#"{"model":null,"content":null,"seed":null}"#);
        let (req, _) = parse_create(&body).expect("nulls are absent");
        assert!(req.model.is_empty() && req.content.is_empty() && req.seed.is_none());
    }
}
