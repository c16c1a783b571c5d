//! Serde types that mirror the Ark `contents/generations/tasks` HTTP API exactly.
//!
//! Shared by the client (`ark`) and the simulator (`sim`). Optional fields are omitted when
//! serialising (the Go SDK's `omitempty`), and JSON `null` deserialises as absent (the Python
//! SDK sends every unset key as `null`). Unknown fields are tolerated.

use serde::{Deserialize, Serialize};

/// The API path, below the base URL (`…/api/v3`).
pub const TASKS_PATH: &str = "/contents/generations/tasks";

/// `POST /contents/generations/tasks` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateTaskRequest {
    /// Model id (`doubao-seedance-…`) or endpoint id (`ep-…`).
    #[serde(default)]
    pub model: String,
    /// Prompt and media items.
    #[serde(default)]
    pub content: Vec<ContentItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_last_frame: Option<bool>,
    /// `default` or `flex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// Seconds from the remote `created_at`, in `[3600, 259200]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_expires_after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_audio: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_fixed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omni_reference_task_type: Option<String>,
    /// Top-level fields this crate does not model, kept as they are (the Go SDK's `ExtraBody`
    /// merges such keys into the body too). seedq sends a job spec's `extra` fields here; the
    /// simulator sees what real clients send beside the documented fields.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One `content[]` item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentItem {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: MediaUrl,
        /// `first_frame`, `last_frame` or `reference_image`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    VideoUrl {
        video_url: MediaUrl,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    AudioUrl {
        audio_url: MediaUrl,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    DraftTask {
        draft_task: DraftTaskRef,
    },
}

/// `{ "url": "…" }`: an http(s) URL, a `data:` URL or an `asset://` id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaUrl {
    pub url: String,
}

/// `{ "id": "cgt-…" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftTaskRef {
    pub id: String,
}

/// `{ "type": "web_search" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
}

/// `POST` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTaskResponse {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
}

/// A remote task's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Cancelled,
    Succeeded,
    Failed,
    Expired,
    /// A status this client does not know yet; treated as still in progress.
    #[serde(other)]
    #[default]
    Unknown,
}

impl TaskStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Expired => "expired",
            TaskStatus::Unknown => "unknown",
        }
    }

    /// Finished one way or another: no further status change will come.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Cancelled
                | TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::Expired
        )
    }
}

/// The task object returned by GET, list items and callbacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Missing fields read as empty: the Go SDK's own tests decode fragments such as
    /// `{"output_format":"mp4"}` into this type (tests/golden volcengine-go-sdk-005), and a
    /// client must not fail on a thin body (a task without a status is still in progress).
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub status: TaskStatus,
    /// The Go SDK's list item still calls this `failure_reason`.
    #[serde(
        default,
        alias = "failure_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub error: Option<TaskError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<TaskContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<i64>,
    /// One word on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framespersecond: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_expires_after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_audio: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
}

/// `error` on a failed task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// `content` on a succeeded task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_frame_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_url: Option<String>,
}

/// `usage` on a succeeded task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "int_or_string")]
    pub completion_tokens: i64,
    #[serde(default, deserialize_with = "int_or_string")]
    pub total_tokens: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_usage: Option<ToolUsage>,
}

/// A token count as a number or as a decimal string: BytePlus' published Get schema types
/// `usage.*_tokens` as strings (tests/golden/tanstack-ai.jsonl tanstack-ai-056).
fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        Str(String),
        Null(()),
    }
    match IntOrString::deserialize(d)? {
        IntOrString::Int(n) => Ok(n),
        IntOrString::Str(s) => s.trim().parse().map_err(serde::de::Error::custom),
        IntOrString::Null(()) => Ok(0),
    }
}

/// `usage.tool_usage`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolUsage {
    #[serde(default)]
    pub web_search: i64,
}

/// `GET /contents/generations/tasks` response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTasksResponse {
    #[serde(default)]
    pub total: i64,
    #[serde(default)]
    pub items: Vec<Task>,
}

/// The error envelope: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ApiErrorBody,
}

/// The body of an error response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The observed Seedance 2.0 response from docs/ark-api.md §3.2.
    const GET_SUCCEEDED: &str = r#"{ "id":"cgt-20260514183217-t8rzv","model":"doubao-seedance-2-0-260128","status":"succeeded",
      "content":{"video_url":"https://example.invalid/x.mp4?X-Tos-Expires=86400"},
      "usage":{"completion_tokens":108900,"total_tokens":108900},
      "created_at":1778754737,"updated_at":1778755025,"seed":1276,"resolution":"720p","ratio":"16:9",
      "duration":5,"framespersecond":24,"service_tier":"default","execution_expires_after":172800,
      "generate_audio":true,"draft":false }"#;

    #[test]
    fn observed_get_response_deserialises() {
        let t: Task = serde_json::from_str(GET_SUCCEEDED).expect("fixture parses");
        assert_eq!(t.id, "cgt-20260514183217-t8rzv");
        assert_eq!(t.status, TaskStatus::Succeeded);
        assert_eq!(t.usage.as_ref().map(|u| u.total_tokens), Some(108_900));
        assert_eq!(t.framespersecond, Some(24));
        assert_eq!(t.created_at, 1_778_754_737);
        assert!(t.content.and_then(|c| c.video_url).is_some());
        assert_eq!(t.frames, None);
    }

    #[test]
    fn go_list_item_failure_reason_is_accepted() {
        let body = r#"{"total":1,"items":[{"id":"cgt-1","model":"m","status":"failed",
            "failure_reason":{"code":"OutputVideoSensitiveContentDetected.PolicyViolation","message":"x"},
            "created_at":1,"updated_at":2,"some_future_field":[1,2]}]}"#;
        let l: ListTasksResponse = serde_json::from_str(body).expect("list parses");
        assert_eq!(l.total, 1);
        let err = l.items[0].error.as_ref().map(|e| e.code.as_str());
        assert_eq!(
            err,
            Some("OutputVideoSensitiveContentDetected.PolicyViolation")
        );
    }

    #[test]
    fn error_envelope_deserialises() {
        let body = r#"{"error":{"code":"InvalidParameter","message":"The parameter `execution_expires_after` specified in the request is not valid. Request id: 0217708948167874d1a7bd4cdfcf1811296cf68db8d43d8aa0100","param":"execution_expires_after","type":"BadRequest"}}"#;
        let e: ErrorEnvelope = serde_json::from_str(body).expect("envelope parses");
        assert_eq!(e.error.code, "InvalidParameter");
        assert_eq!(e.error.param.as_deref(), Some("execution_expires_after"));
        assert_eq!(e.error.kind.as_deref(), Some("BadRequest"));
    }

    #[test]
    fn python_sdk_nulls_count_as_absent() {
        let body = r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"cat"}],
            "callback_url":null,"return_last_frame":null,"service_tier":null,"execution_expires_after":null,
            "generate_audio":null,"draft":null,"seed":null,"resolution":null,"ratio":null,"duration":null,
            "frames":null,"camera_fixed":null,"watermark":null,"priority":null,"safety_identifier":null,"tools":null}"#;
        let r: CreateTaskRequest = serde_json::from_str(body).expect("null body parses");
        assert_eq!(r.seed, None);
        assert_eq!(r.callback_url, None);
        // Re-serialised, nothing optional is sent.
        let out = serde_json::to_string(&r).expect("serialises");
        assert_eq!(
            out,
            r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"cat"}]}"#
        );
    }

    #[test]
    fn content_items_round_trip() {
        let body = r#"[{"type":"text","text":"a"},
            {"type":"image_url","image_url":{"url":"https://x/y.png"},"role":"first_frame"},
            {"type":"video_url","video_url":{"url":"asset://v1"},"role":"reference_video"},
            {"type":"audio_url","audio_url":{"url":"asset://a1"},"role":"reference_audio"},
            {"type":"draft_task","draft_task":{"id":"cgt-20250918165243-bfpzb"}}]"#;
        let items: Vec<ContentItem> = serde_json::from_str(body).expect("items parse");
        assert_eq!(items.len(), 5);
        let again: Vec<ContentItem> =
            serde_json::from_str(&serde_json::to_string(&items).expect("ser")).expect("de");
        assert_eq!(items, again);
    }

    #[test]
    fn unknown_status_is_tolerated() {
        let t: Task = serde_json::from_str(r#"{"id":"cgt-x","status":"paused"}"#).expect("parses");
        assert_eq!(t.status, TaskStatus::Unknown);
        assert!(!t.status.is_final());
    }
}
