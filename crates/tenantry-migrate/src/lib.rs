//! Tenant schemas: templates read from `templates.dir` at run time, so a released
//! binary applies migration files it was not built with; what the fleet lacks
//! (`fleet::plan`, `fleet::status`); the record of what was applied (`history`); and
//! the fleet runner (`runner`).

pub mod fanout;
pub mod fleet;
pub mod history;
pub mod runner;
mod template;

pub use template::{Applied, MigrationFile, Template, TemplateError};
