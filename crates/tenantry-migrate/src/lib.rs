//! Tenant schemas: templates read from `templates.dir` at run time, so a released
//! binary applies migration files it was not built with; and what the fleet lacks
//! (`fleet::plan`, `fleet::status`).

pub mod fleet;
mod template;

pub use template::{Template, TemplateError};
