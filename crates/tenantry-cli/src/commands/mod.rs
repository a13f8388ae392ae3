pub mod catalog;
pub mod dev;
pub mod migrate;
pub mod reconcile;
pub mod serve;
pub mod server;
pub mod tenant;
pub mod token;
