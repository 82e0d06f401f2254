//! HTTP/1.1 connection handling.
