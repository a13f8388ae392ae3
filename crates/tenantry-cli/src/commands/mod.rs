pub mod catalog;
pub mod dev;
pub mod serve;
