//! CSV and JSONL import: one job per row (or line), one request field per column (or key).
//!
//! The header names the columns, with the same names as a JSONL line's fields
//! ([`crate::request::JobSpec`]); [`COLUMNS`] is the documented list and its types. An empty
//! cell means "not given". List columns (`refs`, `video_refs`, `audio_refs`, `tags`) hold
//! several values separated by `;`. Booleans are `true`/`false` (also `yes`/`no`, `1`/`0`).
//! Raw `content` items and `tools` need JSON and stay JSONL-only.
//!
//! This module only turns rows into [`JobSpec`]s; validation against the catalogue and the
//! all-or-nothing admission happen in the CLI, as for JSONL.

use std::io::{BufRead, Read};

use serde_json::{Map, Value};

use crate::request::JobSpec;

/// Separator inside list cells.
pub const LIST_SEPARATOR: char = ';';

/// A column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Boolean,
    List,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Integer => "an integer",
            Kind::Boolean => "true or false",
            Kind::List => "a ;-separated list",
        }
    }
}

/// Every column a CSV file may have, with its type. The names are `JobSpec`'s fields.
pub const COLUMNS: &[(&str, Kind)] = &[
    ("prompt", Kind::Text),
    ("model", Kind::Text),
    ("first_frame", Kind::Text),
    ("last_frame", Kind::Text),
    ("refs", Kind::List),
    ("video_refs", Kind::List),
    ("audio_refs", Kind::List),
    ("draft_task", Kind::Text),
    ("resolution", Kind::Text),
    ("ratio", Kind::Text),
    ("duration", Kind::Integer),
    ("frames", Kind::Integer),
    ("seed", Kind::Integer),
    ("camera_fixed", Kind::Boolean),
    ("watermark", Kind::Boolean),
    ("return_last_frame", Kind::Boolean),
    ("service_tier", Kind::Text),
    ("flex", Kind::Boolean),
    ("execution_expires_after", Kind::Integer),
    ("expires_after", Kind::Text),
    ("callback_url", Kind::Text),
    ("generate_audio", Kind::Boolean),
    ("draft", Kind::Boolean),
    ("remote_priority", Kind::Integer),
    ("safety_identifier", Kind::Text),
    ("output_format", Kind::Text),
    ("omni_reference_task_type", Kind::Text),
    ("priority", Kind::Integer),
    ("tags", Kind::List),
    ("key", Kind::Text),
    ("batch", Kind::Text),
];

/// Columns that need JSON values and so only exist in JSONL.
const JSON_ONLY: [&str; 2] = ["content", "tools"];

/// A row that could not become a [`JobSpec`]. Row numbers count data rows from 1 (the
/// header is not a row); line numbers are the file's.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("header: unknown column {column:?} (columns: {known})")]
    UnknownColumn { column: String, known: String },
    #[error("header: column {column:?} cannot be given in CSV: it takes JSON; use a JSONL file")]
    JsonOnly { column: String },
    #[error("header: column {column:?} appears twice")]
    Duplicate { column: String },
    #[error("header: cannot be read")]
    Header(#[source] csv::Error),
    #[error("row {row} (line {line}): cannot be read: {source}")]
    Read {
        row: u64,
        line: u64,
        #[source]
        source: csv::Error,
    },
    #[error("row {row} (line {line}), column {column}: {value:?} is not {expected}")]
    Value {
        row: u64,
        line: u64,
        column: String,
        value: String,
        expected: &'static str,
    },
    #[error("row {row} (line {line}): {message}")]
    Spec {
        row: u64,
        line: u64,
        message: String,
    },
}

/// One parsed row: where it was and what it asks for.
#[derive(Debug)]
pub struct Row {
    pub row: u64,
    pub line: u64,
    pub spec: JobSpec,
}

/// The documented column names, comma-separated.
pub fn column_names() -> String {
    COLUMNS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_of(column: &str) -> Option<Kind> {
    COLUMNS.iter().find(|(n, _)| *n == column).map(|(_, k)| *k)
}

/// Reads every row. Header problems end the read at once; row problems are collected, so a
/// file's errors come out all together, and the caller imports nothing if there are any.
///
/// # Errors
/// A bad header (an unknown, JSON-only or repeated column).
pub fn read(reader: impl Read) -> Result<Vec<Result<Row, CsvError>>, CsvError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::Headers)
        .from_reader(reader);
    let header: Vec<String> = rdr
        .headers()
        .map_err(CsvError::Header)?
        .iter()
        .map(str::to_string)
        .collect();
    let mut kinds = Vec::with_capacity(header.len());
    for (i, column) in header.iter().enumerate() {
        if header[..i].contains(column) {
            return Err(CsvError::Duplicate {
                column: column.clone(),
            });
        }
        if JSON_ONLY.contains(&column.as_str()) {
            return Err(CsvError::JsonOnly {
                column: column.clone(),
            });
        }
        let kind = kind_of(column).ok_or_else(|| CsvError::UnknownColumn {
            column: column.clone(),
            known: column_names(),
        })?;
        kinds.push(kind);
    }
    let mut out = Vec::new();
    for (i, record) in rdr.records().enumerate() {
        let row = i as u64 + 1;
        let record = match record {
            Ok(r) => r,
            Err(source) => {
                let line = source.position().map_or(row + 1, |p| p.line());
                out.push(Err(CsvError::Read { row, line, source }));
                continue;
            }
        };
        let line = record.position().map_or(row + 1, |p| p.line());
        out.push(parse_row(&header, &kinds, &record, row, line));
    }
    Ok(out)
}

fn parse_row(
    header: &[String],
    kinds: &[Kind],
    record: &csv::StringRecord,
    row: u64,
    line: u64,
) -> Result<Row, CsvError> {
    let mut map = Map::new();
    for ((column, kind), cell) in header.iter().zip(kinds).zip(record.iter()) {
        // Text cells keep their spaces (a prompt may start with one); others are trimmed.
        if cell.trim().is_empty() {
            continue;
        }
        let bad = || CsvError::Value {
            row,
            line,
            column: column.clone(),
            value: cell.to_string(),
            expected: kind.expected(),
        };
        let value = match kind {
            Kind::Text => Value::String(cell.to_string()),
            Kind::Integer => Value::from(cell.trim().parse::<i64>().map_err(|_| bad())?),
            Kind::Boolean => Value::Bool(parse_bool(cell.trim()).ok_or_else(bad)?),
            Kind::List => Value::Array(
                cell.split(LIST_SEPARATOR)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
        };
        map.insert(column.clone(), value);
    }
    let spec =
        serde_json::from_value::<JobSpec>(Value::Object(map)).map_err(|e| CsvError::Spec {
            row,
            line,
            message: e.to_string(),
        })?;
    Ok(Row { row, line, spec })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "y" => Some(true),
        "false" | "no" | "0" | "n" => Some(false),
        _ => None,
    }
}

/// Longest JSONL line accepted, newline excluded. A line is one request, and a request body is
/// at most 64 MB (docs/ark-api.md §8 "Whole request body ≤ 64 MB"): a longer line cannot become a
/// job, and without a cap one endless line (`/dev/zero`, a file without newlines) would be
/// read into memory whole.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// A JSONL line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line {line} is longer than {max} bytes (a request body is at most 64 MB)")]
    TooLong { line: usize, max: usize },
    #[error("line {line} cannot be read: {source}")]
    Io {
        line: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the next line (numbered `line`, from 1) into `buf`, without its line ending and,
/// on line 1, without a UTF-8 byte order mark (as the CSV reader drops it). At most `max`
/// bytes are read. Returns false at the end of the input.
///
/// # Errors
/// The line is longer than `max`, or the read fails.
pub fn next_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    line: usize,
    max: usize,
) -> Result<bool, LineError> {
    buf.clear();
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = reader
        .by_ref()
        .take(cap)
        .read_until(b'\n', buf)
        .map_err(|source| LineError::Io { line, source })?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > max {
        return Err(LineError::TooLong { line, max });
    }
    if line == 1 && buf.starts_with(b"\xEF\xBB\xBF") {
        buf.drain(..3);
    }
    Ok(true)
}

/// The JSON type of a value, for errors.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one JSONL line into a [`JobSpec`]. Errors name the field at fault: serde's own
/// message for a wrong type gives only a column (`invalid type: string "5", expected i64 at
/// line 1 column 69`), and for a non-object talks about struct internals.
///
/// # Errors
/// Not JSON, not an object, an unknown field, or a field of the wrong type.
pub fn parse_jsonl(line: &str) -> Result<JobSpec, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err(format!(
            "a job is a JSON object such as {{\"prompt\": \"a fox\"}}, not {}",
            json_type(&value)
        ));
    };
    serde_json::from_value::<JobSpec>(Value::Object(map.clone())).map_err(|whole| {
        // Every JobSpec field is optional, so a field alone deserialises unless it is the
        // one at fault: the first such field is named with its value.
        for (k, v) in &map {
            let mut one = Map::new();
            one.insert(k.clone(), v.clone());
            if let Err(e) = serde_json::from_value::<JobSpec>(Value::Object(one)) {
                let why = e.to_string();
                if why.starts_with("unknown field") {
                    return why;
                }
                return format!("field {k:?}: {} {v} is not accepted: {why}", json_type(v));
            }
        }
        whole.to_string()
    })
}

/// The CSV column an API field name belongs to, if any: `duration` → `duration`,
/// `first_frame (a.png)` → `first_frame`, `refs[1]` → `refs`.
pub fn column_for_param(param: &str) -> Option<&'static str> {
    let head = param
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("");
    COLUMNS.iter().map(|(n, _)| *n).find(|n| *n == head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_specs_with_typed_values() {
        let text = "prompt,model,duration,flex,tags,seed\n\
                    a fox,m1,5,true,a;b,\n\
                    \"a cat, yawning\",,3,no,,7\n";
        let rows = read(text.as_bytes()).expect("header");
        assert_eq!(rows.len(), 2);
        let a = rows[0].as_ref().expect("row 1");
        assert_eq!(a.spec.prompt.as_deref(), Some("a fox"));
        assert_eq!(a.spec.duration, Some(5));
        assert_eq!(a.spec.flex, Some(true));
        assert_eq!(a.spec.tags, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(a.spec.seed, None);
        let b = rows[1].as_ref().expect("row 2");
        assert_eq!(b.spec.prompt.as_deref(), Some("a cat, yawning"));
        assert_eq!(b.spec.model, None);
        assert_eq!(b.spec.flex, Some(false));
        assert_eq!(b.spec.seed, Some(7));
        assert_eq!((b.row, b.line), (2, 3));
    }

    #[test]
    fn a_bad_cell_names_its_row_and_column() {
        let text = "prompt,duration\nok,5\nbad,five\n";
        let rows = read(text.as_bytes()).expect("header");
        let err = rows[1].as_ref().err().map(ToString::to_string);
        assert_eq!(
            err.as_deref(),
            Some("row 2 (line 3), column duration: \"five\" is not an integer")
        );
    }

    #[test]
    fn header_problems_are_refused() {
        let e = read("prompt,durration\n".as_bytes())
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("durration") && e.contains("duration")));
        let e = read("prompt,tools\n".as_bytes())
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("JSONL")));
        let e = read("prompt,prompt\n".as_bytes())
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("twice")));
    }

    #[test]
    fn every_column_is_a_jobspec_field() {
        // A spec with every column set must deserialise: no column name drifted from JobSpec.
        let mut map = Map::new();
        for (n, k) in COLUMNS {
            let v = match k {
                Kind::Text => Value::from("x"),
                Kind::Integer => Value::from(1),
                Kind::Boolean => Value::from(true),
                Kind::List => Value::Array(vec![Value::from("x")]),
            };
            map.insert((*n).to_string(), v);
        }
        assert!(serde_json::from_value::<JobSpec>(Value::Object(map)).is_ok());
    }

    #[test]
    fn jsonl_errors_name_the_field() {
        let e = parse_jsonl(r#"{"prompt":"a fox","duration":"5"}"#).expect_err("type");
        assert!(
            e.contains("field \"duration\"") && e.contains("\"5\""),
            "{e}"
        );
        let e = parse_jsonl(r#"["a","b"]"#).expect_err("array");
        assert!(e.contains("JSON object") && e.contains("an array"), "{e}");
        assert!(!e.contains("33 elements"), "{e}");
        let e = parse_jsonl(r#"{"promt":"x"}"#).expect_err("unknown");
        assert!(e.contains("promt"), "{e}");
        let e = parse_jsonl("{").expect_err("syntax");
        assert!(e.contains("not valid JSON"), "{e}");
        assert_eq!(
            parse_jsonl(r#"{"prompt":"ok","duration":5}"#)
                .expect("fine")
                .duration,
            Some(5)
        );
    }

    #[test]
    fn jsonl_lines_drop_a_bom_and_are_capped() {
        let text = b"\xEF\xBB\xBF{\"prompt\":\"a\"}\r\n{\"prompt\":\"b\"}";
        let mut r = &text[..];
        let mut buf = Vec::new();
        assert!(next_line(&mut r, &mut buf, 1, 100).expect("line 1"));
        assert_eq!(buf, br#"{"prompt":"a"}"#);
        assert!(next_line(&mut r, &mut buf, 2, 100).expect("line 2"));
        assert_eq!(buf, br#"{"prompt":"b"}"#);
        assert!(!next_line(&mut r, &mut buf, 3, 100).expect("eof"));

        // An endless line stops at the cap instead of filling memory.
        let mut zero = std::io::BufReader::new(std::io::repeat(b'x'));
        let e = next_line(&mut zero, &mut buf, 1, 1000).expect_err("too long");
        assert!(
            matches!(e, LineError::TooLong { line: 1, max: 1000 }),
            "{e}"
        );
        assert!(buf.len() <= 1001);
        // Exactly at the cap is fine.
        let exact = vec![b'y'; 1000];
        assert!(next_line(&mut &exact[..], &mut buf, 1, 1000).expect("fits"));
    }

    #[test]
    fn params_map_to_columns() {
        assert_eq!(column_for_param("duration"), Some("duration"));
        assert_eq!(column_for_param("first_frame (a.png)"), Some("first_frame"));
        assert_eq!(column_for_param("refs[1]"), Some("refs"));
        assert_eq!(column_for_param("content[0].role"), None);
    }
}
