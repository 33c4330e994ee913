//! Shared helpers for the end-to-end tests live in `xlb_bench::lab`.
