//! Placeholder for output formats.
