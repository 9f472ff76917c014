//! The unit-file language, shared by the scheduler, the agent, the renderer and the CLI.
//!
//! # Layout
//! - [`file`]: unit files — go-systemd's lexer, fleet's normalised text and hash.
//! - [`name`]: unit names (prefix, instance, template), validation, specifiers.
//! - [`glob`]: Go's `path.Match`, for `Conflicts`, `Replaces` and confd's `ls`/`gets`.
//!
//! Data flow: unit text → [`file::parse`] → options (stored, hashed) → the scheduler's
//! requirements and the agent's lifecycle spec, with [`name`]'s specifiers expanded.

pub mod file;
pub mod glob;
pub mod name;
