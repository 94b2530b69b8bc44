//! Shared helpers for the integration tests.

#![allow(dead_code)]

pub mod db;
pub mod exposition;
pub mod fixtures;
pub mod kafka;
pub mod logs;
pub mod pgproxy;
pub mod spansink;
pub mod traffic;
