//! CSV import: one job per row, one request field per column.
//!
//! The header names the columns, with the same names as a JSONL line's fields
//! ([`crate::request::JobSpec`]); [`COLUMNS`] is the documented list and its types. An empty
//! cell means "not given". List columns (`refs`, `video_refs`, `audio_refs`, `tags`) hold
//! several values separated by `;`. Booleans are `true`/`false` (also `yes`/`no`, `1`/`0`).
//! Raw `content` items and `tools` need JSON and stay JSONL-only.
//!
//! This module only turns rows into [`JobSpec`]s; validation against the catalogue and the
//! all-or-nothing admission happen in the CLI, as for JSONL.

use std::io::Read;

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
    fn params_map_to_columns() {
        assert_eq!(column_for_param("duration"), Some("duration"));
        assert_eq!(column_for_param("first_frame (a.png)"), Some("first_frame"));
        assert_eq!(column_for_param("refs[1]"), Some("refs"));
        assert_eq!(column_for_param("content[0].role"), None);
    }
}
