//! Group-commit writer.
