//! The registry format.
