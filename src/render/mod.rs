//! confd: template resources turn store keys into config files.
//!
//! # Layout
//! - [`resource`]: `conf.d/*.toml` → [`resource::Resource`] (pure; errors name the file
//!   and field).
//! - [`memkv`]: the keys a template sees, with confd's lookup semantics.
//! - [`funcs`]: confd's template functions over one value type, for both dialects.
//! - [`template`]: source + data → text, in Go's `text/template` dialect (gotmpl) or
//!   handlebars (`.hbs`); errors say file, line and why.
//! - [`commit`]: stage → compare → `check_cmd` → sync, rename, sync dir → `reload_cmd`,
//!   through the `Files` and `Processes` seams.
//! - [`feed`]: watch mode's queue of store events, and how one changes a resource's keys.
//! - [`runner`]: the shell — `--onetime`, interval and watch mode over a
//!   [`crate::client::KvClient`].
//!
//! Data flow: resource → keys read (recursive, quorum) → [`memkv::MemKv`] with the prefix
//! stripped → template render → stage file → check → rename → reload; in watch mode a
//! recursive watch on the resource's keys, from the index the read saw, feeds events that
//! are applied to the keys held in memory before the next render.

pub mod commit;
pub mod feed;
pub mod funcs;
pub mod memkv;
pub mod resource;
pub mod runner;
pub mod template;
