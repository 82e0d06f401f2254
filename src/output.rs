//! Writing query results: an aligned table for people, and CSV, a JSON
//! array or newline-delimited JSON for programs.
//!
//! CSV and both JSON formats write each row as it arrives, so a large
//! report uses little memory. The table keeps its rows until `finish`,
//! because column widths depend on every row.

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};

use rusqlite::types::ValueRef;
use unicode_width::UnicodeWidthStr;

/// An output format for `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header line.
    Table,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// Returns the format used without `--format`: a table when standard
    /// output is a terminal, CSV otherwise.
    pub fn default_for_stdout() -> Format {
        if io::stdout().is_terminal() {
            Format::Table
        } else {
            Format::Csv
        }
    }
}

/// Writes one line to standard output. After the reader has closed the
/// pipe, as `head -1` does, the line is dropped instead of returned as an
/// error, so a command still finishes its work and keeps its exit status.
/// Other write errors, such as a full disk, are returned, and name
/// standard output so that they are not taken for the database's.
pub fn print_line(line: std::fmt::Arguments) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{line}") {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context("failed to write to standard output")),
        Ok(()) => Ok(()),
    }
}

/// Returns true if `error` or one of its causes is a write to a closed
/// pipe, as when the output goes to `head -1`. Callers end quietly then.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io_error| io_error.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes rows of SQLite values under fixed column names in one format.
///
/// Call `write_row` once per row and `finish` at the end: `finish` writes
/// the table or the closing bracket of a JSON array, and flushes.
pub struct RowWriter<W: Write> {
    columns: Vec<String>,
    sink: Sink<W>,
}

enum Sink<W: Write> {
    Table { out: W, rows: Vec<Vec<Cell>> },
    // Boxed because the writer carries its own buffer state, far larger
    // than the other variants.
    Csv(Box<csv::Writer<W>>),
    Json { out: W, rows_written: u64 },
    Ndjson(W),
}

/// One table cell: its display text, and whether it is a number (numbers
/// are right-aligned).
struct Cell {
    text: String,
    is_number: bool,
}

impl<W: Write> RowWriter<W> {
    /// Starts output in `format`. CSV writes its header line here, and the
    /// other formats write nothing until the first row or `finish`.
    pub fn new(format: Format, columns: &[&str], out: W) -> io::Result<RowWriter<W>> {
        let columns: Vec<String> = columns.iter().map(|column| column.to_string()).collect();
        let sink = match format {
            Format::Table => Sink::Table { out, rows: Vec::new() },
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer.write_record(&columns).map_err(csv_to_io)?;
                Sink::Csv(Box::new(writer))
            }
            Format::Json => Sink::Json { out, rows_written: 0 },
            Format::Ndjson => Sink::Ndjson(out),
        };
        Ok(RowWriter { columns, sink })
    }

    /// Writes one row, given one value per column in column order.
    pub fn write_row(&mut self, values: &[ValueRef<'_>]) -> io::Result<()> {
        debug_assert_eq!(values.len(), self.columns.len(), "one value per column");
        match &mut self.sink {
            Sink::Table { rows, .. } => {
                rows.push(values.iter().map(|value| table_cell(*value)).collect());
            }
            Sink::Csv(writer) => {
                // Field by field, so that text and numbers are written
                // without a String for each (large reports spent a fifth
                // of their time allocating them).
                let mut number = [0u8; 32];
                for value in values {
                    match *value {
                        ValueRef::Integer(integer) => {
                            let mut cursor = io::Cursor::new(&mut number[..]);
                            write!(cursor, "{integer}")?;
                            let length = cursor.position() as usize;
                            writer.write_field(&number[..length])
                        }
                        ValueRef::Text(bytes) if std::str::from_utf8(bytes).is_ok() => writer.write_field(bytes),
                        other => writer.write_field(plain_text(other).as_bytes()),
                    }
                    .map_err(csv_to_io)?;
                }
                writer.write_record(None::<&[u8]>).map_err(csv_to_io)?;
            }
            Sink::Json { out, rows_written } => {
                out.write_all(if *rows_written == 0 { b"[\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, &json_object(&self.columns, values))?;
                *rows_written += 1;
            }
            Sink::Ndjson(out) => {
                serde_json::to_writer(&mut *out, &json_object(&self.columns, values))?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Ends the output and flushes it.
    pub fn finish(self) -> io::Result<()> {
        match self.sink {
            Sink::Table { mut out, rows } => {
                write_table(&mut out, &self.columns, &rows)?;
                out.flush()
            }
            Sink::Csv(mut writer) => writer.flush(),
            Sink::Json { mut out, rows_written } => {
                out.write_all(if rows_written == 0 { b"[]\n" } else { b"\n]\n" })?;
                out.flush()
            }
            Sink::Ndjson(mut out) => out.flush(),
        }
    }
}

/// Converts a CSV error keeping the kind of an I/O error, so that a
/// closed pipe is still recognized as `BrokenPipe` (the csv crate's own
/// conversion makes every error `Other`).
fn csv_to_io(error: csv::Error) -> io::Error {
    let kind = match error.kind() {
        csv::ErrorKind::Io(io_error) => io_error.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}

/// Returns a value as plain text: NULL as the empty string, text that is
/// not UTF-8 with U+FFFD in place of invalid bytes, a blob as hex digits.
fn plain_text(value: ValueRef<'_>) -> Cow<'_, str> {
    match value {
        ValueRef::Null => Cow::Borrowed(""),
        ValueRef::Integer(number) => Cow::Owned(number.to_string()),
        ValueRef::Real(number) => Cow::Owned(number.to_string()),
        ValueRef::Text(bytes) => String::from_utf8_lossy(bytes),
        ValueRef::Blob(bytes) => Cow::Owned(hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Builds one JSON object with a member per column: integers and reals as
/// numbers, NULL as null, text as a string, a blob as a hex string.
fn json_object(columns: &[String], values: &[ValueRef<'_>]) -> serde_json::Map<String, serde_json::Value> {
    columns
        .iter()
        .zip(values)
        .map(|(column, value)| (column.clone(), json_value(*value)))
        .collect()
}

fn json_value(value: ValueRef<'_>) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(number) => Json::from(number),
        // JSON has no NaN or infinity.
        ValueRef::Real(number) => serde_json::Number::from_f64(number).map_or(Json::Null, Json::Number),
        ValueRef::Text(bytes) => Json::String(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => Json::String(hex(bytes)),
    }
}

/// Returns a value as table text. Control characters such as a newline in
/// a text reply are shown escaped (`\n`), so that each row stays one line.
fn table_cell(value: ValueRef<'_>) -> Cell {
    let is_number = matches!(value, ValueRef::Integer(_) | ValueRef::Real(_));
    let plain = plain_text(value);
    let text = if plain.chars().any(char::is_control) {
        plain
            .chars()
            .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
            .collect()
    } else {
        plain.into_owned()
    };
    Cell { text, is_number }
}

/// Writes the header, a dashed line under it, and the rows, with columns
/// two spaces apart. A column whose values are all numbers (NULLs aside)
/// is right-aligned. Lines carry no trailing spaces.
fn write_table(out: &mut impl Write, columns: &[String], rows: &[Vec<Cell>]) -> io::Result<()> {
    let mut widths: Vec<usize> = columns.iter().map(|column| column.width()).collect();
    let mut right_aligned = vec![true; columns.len()];
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.text.width());
            if !cell.is_number && !cell.text.is_empty() {
                right_aligned[index] = false;
            }
        }
    }

    let header: Vec<&str> = columns.iter().map(String::as_str).collect();
    write_table_line(out, &header, &widths, &right_aligned)?;
    let dashes: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    let dashes: Vec<&str> = dashes.iter().map(String::as_str).collect();
    write_table_line(out, &dashes, &widths, &right_aligned)?;
    for row in rows {
        let texts: Vec<&str> = row.iter().map(|cell| cell.text.as_str()).collect();
        write_table_line(out, &texts, &widths, &right_aligned)?;
    }
    Ok(())
}

fn write_table_line(out: &mut impl Write, texts: &[&str], widths: &[usize], right_aligned: &[bool]) -> io::Result<()> {
    let mut line = String::new();
    for (index, text) in texts.iter().enumerate() {
        if index > 0 {
            line.push_str("  ");
        }
        // Padding counts display columns, so wide characters such as CJK
        // or emoji keep the columns aligned.
        let padding = " ".repeat(widths[index].saturating_sub(text.width()));
        if right_aligned[index] {
            line.push_str(&padding);
            line.push_str(text);
        } else {
            line.push_str(text);
            line.push_str(&padding);
        }
    }
    // An empty last cell would leave the separator and padding behind.
    line.truncate(line.trim_end_matches(' ').len());
    line.push('\n');
    out.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: Format, columns: &[&str], rows: &[Vec<ValueRef<'_>>]) -> String {
        let mut buffer = Vec::new();
        let mut writer = RowWriter::new(format, columns, &mut buffer).unwrap();
        for row in rows {
            writer.write_row(row).unwrap();
        }
        writer.finish().unwrap();
        String::from_utf8(buffer).unwrap()
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines() {
        let rows = vec![vec![
            ValueRef::Text(b"a,b"),
            ValueRef::Text(b"say \"hi\"\nbye"),
            ValueRef::Null,
            ValueRef::Integer(7),
        ]];
        let output = render(Format::Csv, &["w", "x", "y", "z"], &rows);
        assert_eq!(output, "w,x,y,z\n\"a,b\",\"say \"\"hi\"\"\nbye\",,7\n");
    }

    #[test]
    fn csv_without_rows_has_header() {
        assert_eq!(render(Format::Csv, &["a", "b"], &[]), "a,b\n");
    }

    #[test]
    fn json_uses_json_types() {
        let rows = vec![
            vec![ValueRef::Integer(1), ValueRef::Text(b"x"), ValueRef::Null, ValueRef::Real(0.5)],
            vec![ValueRef::Integer(-2), ValueRef::Text(b"bad \xFF byte"), ValueRef::Blob(b"\x01\xAB"), ValueRef::Real(f64::NAN)],
        ];
        let output = render(Format::Json, &["n", "t", "z", "r"], &rows);
        let parsed: serde_json::Value = serde_json::from_str(&output).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([
                {"n": 1, "t": "x", "z": null, "r": 0.5},
                {"n": -2, "t": "bad \u{FFFD} byte", "z": "01ab", "r": null},
            ])
        );
    }

    #[test]
    fn json_without_rows_is_empty_array() {
        assert_eq!(render(Format::Json, &["a"], &[]), "[]\n");
    }

    #[test]
    fn ndjson_writes_one_object_per_line() {
        let rows = vec![vec![ValueRef::Integer(1)], vec![ValueRef::Integer(2)]];
        assert_eq!(render(Format::Ndjson, &["id"], &rows), "{\"id\":1}\n{\"id\":2}\n");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec![ValueRef::Integer(5), ValueRef::Text(b"short"), ValueRef::Text(b"x")],
            vec![ValueRef::Integer(1234), ValueRef::Text(b"a longer text"), ValueRef::Null],
        ];
        let output = render(Format::Table, &["id", "name", "end"], &rows);
        let expected = [
            "  id  name           end",
            "----  -------------  ---",
            "   5  short          x",
            "1234  a longer text",
        ];
        assert_eq!(output.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn table_escapes_newlines_and_counts_wide_characters() {
        let rows = vec![
            vec![ValueRef::Text("line one\nline two".as_bytes()), ValueRef::Integer(1)],
            vec![ValueRef::Text("日本".as_bytes()), ValueRef::Integer(2)],
        ];
        let output = render(Format::Table, &["message", "id"], &rows);
        let expected = [
            "message             id",
            "------------------  --",
            "line one\\nline two   1",
            "日本                 2",
        ];
        assert_eq!(output.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn broken_pipe_is_recognized_through_context() {
        let error = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing rows");
        assert!(is_broken_pipe(&error));
        let other = anyhow::Error::new(io::Error::from(io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other));
    }
}
