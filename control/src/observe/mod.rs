//! Reading the datapath for operators and their tools: counters and rates ([`counters`]),
//! Prometheus metrics ([`metrics`]), probes and health checks ([`health`]), all served by one
//! HTTP server ([`http`]), logs ([`logging`]), and the interfaces' egress paths and XDP errors
//! ([`ifaces`]).
pub mod census;
pub mod counters;
pub mod health;
pub mod http;
pub mod ifaces;
pub mod logging;
pub mod metrics;
pub mod series;
