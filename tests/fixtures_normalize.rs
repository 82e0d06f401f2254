//! Runs every fixture under `tests/fixtures` through the real normalizer.
//!
//! The expected values live in the README table beside the fixtures, so the
//! table shows a reader exactly what the test checks. A README row is
//! `| `file` | what it exercises | `column = value`<br>... |`, where the
//! value is `NULL`, an integer or a JSON string.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use dsevents::catalog::{self, Kind};
use dsevents::normalize::{normalize, Row, Value};

/// One README row: a fixture file and the column values it must produce.
struct Case {
    file: String,
    expected: Vec<(String, Value)>,
}

fn fixtures_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Returns the names of the `.json` files in `dir`.
fn json_files(dir: &Path) -> BTreeSet<String> {
    let entries = fs::read_dir(dir).unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
    entries
        .map(|entry| {
            entry
                .expect("readable directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".json"))
        .collect()
}

/// Reads the table rows of `dir/README.md`.
fn read_cases(dir: &Path) -> Vec<Case> {
    let readme_path = dir.join("README.md");
    let readme = fs::read_to_string(&readme_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", readme_path.display()));

    let mut cases = Vec::new();
    for line in readme.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 5, "README row must have three cells: {line}");
        let file = cells[1].trim_matches('`').to_string();
        let expected = code_spans(cells[3])
            .into_iter()
            .map(|span| parse_expectation(span, line))
            .collect();
        cases.push(Case { file, expected });
    }
    assert!(!cases.is_empty(), "{} has no table rows", readme_path.display());
    cases
}

/// Returns the text between each pair of backticks.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// Parses `column = value` from a README cell.
fn parse_expectation(span: &str, line: &str) -> (String, Value) {
    let (column, literal) = span
        .split_once(" = ")
        .unwrap_or_else(|| panic!("expected `column = value`, found `{span}` in: {line}"));
    let value = if literal == "NULL" {
        Value::Null
    } else if literal.starts_with('"') {
        let text: String = serde_json::from_str(literal)
            .unwrap_or_else(|error| panic!("invalid JSON string {literal} in: {line}: {error}"));
        Value::Text(text)
    } else {
        let number = literal
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("value {literal} is neither NULL, an integer nor a JSON string in: {line}"));
        Value::Integer(number)
    };
    (column.to_string(), value)
}

/// Returns the kind named by the slug before the first dot of a file name.
fn kind_of(file: &str) -> &'static Kind {
    let slug = file.split('.').next().unwrap_or(file);
    catalog::by_slug(slug)
        .unwrap_or_else(|| panic!("{file} does not start with a kind slug ({})", catalog::slug_list()))
}

/// Normalizes every fixture listed in `dir/README.md` and returns one line
/// per mismatch, so that a failing run lists all of them at once.
fn check_listed_values(dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    for case in read_cases(dir) {
        let kind = kind_of(&case.file);
        let path = dir.join(&case.file);
        let body = fs::read(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        // `quarantined = "text"` means the body must be kept but not
        // normalized, with a reason that contains the text.
        let quarantine = case.expected.iter().find(|(column, _)| column == "quarantined");
        let row = match (normalize(kind, &body), quarantine) {
            (Err(error), Some((_, Value::Text(expected)))) => {
                if !error.contains(expected.as_str()) {
                    failures.push(format!("{}: quarantined because {error:?}, expected a reason containing {expected:?}", case.file));
                }
                continue;
            }
            (Ok(_), Some(_)) => {
                failures.push(format!("{}: normalized, expected it to be quarantined", case.file));
                continue;
            }
            (Ok(row), None) => row,
            (Err(error), _) => {
                failures.push(format!("{}: normalize failed: {error}", case.file));
                continue;
            }
        };

        let columns = kind.columns();
        for (column, expected) in &case.expected {
            let Some(index) = columns.iter().position(|name| name == column) else {
                failures.push(format!("{}: table {} has no column {column}", case.file, kind.table));
                continue;
            };
            if row.values[index] != *expected {
                failures.push(format!(
                    "{}: {column} is {:?}, expected {expected:?}",
                    case.file, row.values[index]
                ));
            }
        }
        if let Some(failure) = check_row_dsid(kind, &row) {
            failures.push(format!("{}: {failure}", case.file));
        }
    }
    failures
}

/// Checks that `Row::dsid`, which the store copies to `deliveries.dsid`,
/// agrees with the kind's `dsid` column.
fn check_row_dsid(kind: &Kind, row: &Row) -> Option<String> {
    let index = kind.columns().iter().position(|name| *name == "dsid")?;
    let from_column = match &row.values[index] {
        Value::Text(text) => Some(text.clone()),
        _ => None,
    };
    (row.dsid != from_column).then(|| format!("Row::dsid is {:?} but the dsid column is {from_column:?}", row.dsid))
}

#[test]
fn every_kind_has_one_sample() {
    let expected: BTreeSet<String> = catalog::KINDS
        .iter()
        .map(|kind| format!("{}.json", kind.slug))
        .collect();
    let found = json_files(&fixtures_dir("samples"));
    assert_eq!(found, expected);
}

#[test]
fn samples_normalize_to_listed_values() {
    let failures = check_listed_values(&fixtures_dir("samples"));
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn variations_normalize_to_listed_values() {
    let failures = check_listed_values(&fixtures_dir("variations"));
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn readme_tables_list_every_fixture() {
    for name in ["samples", "variations"] {
        let dir = fixtures_dir(name);
        let listed: BTreeSet<String> = read_cases(&dir).into_iter().map(|case| case.file).collect();
        assert_eq!(
            listed,
            json_files(&dir),
            "files in the table of {}/README.md",
            dir.display()
        );
    }
}

#[test]
fn every_variation_names_a_kind() {
    for file in json_files(&fixtures_dir("variations")) {
        let parts: Vec<&str> = file.split('.').collect();
        assert!(parts.len() >= 3, "{file} should be named {{slug}}.{{variation}}.json");
        kind_of(&file);
    }
}

#[test]
fn every_case_lists_a_value() {
    for name in ["samples", "variations"] {
        for case in read_cases(&fixtures_dir(name)) {
            assert!(!case.expected.is_empty(), "{name}/{} lists no stored value", case.file);
        }
    }
}

// The next two guard the raw bytes, which an editor or a JSON formatter
// could silently normalize away.

#[test]
fn bom_fixture_starts_with_bom() {
    let body = fs::read(fixtures_dir("variations").join("contact-updated.bom.json")).expect("fixture is readable");
    assert!(
        body.starts_with(b"\xEF\xBB\xBF{"),
        "first bytes: {:02X?}",
        &body[..4.min(body.len())]
    );
}

#[test]
fn lone_surrogate_fixtures_keep_escapes() {
    let dir = fixtures_dir("variations");
    let high = fs::read_to_string(dir.join("text-reply.lone-surrogate.json")).expect("fixture is readable");
    assert!(high.contains(r"Thanks \ud83d see"), "{high}");
    let low = fs::read_to_string(dir.join("text-reply.lone-low-surrogate.json")).expect("fixture is readable");
    assert!(low.contains(r#""\ude00 sounds"#), "{low}");
}
