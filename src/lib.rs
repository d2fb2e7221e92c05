//! tyk-grpc-plugin as a library: everything but the hooks, which are in src/main.rs. A plugin is a
//! `main` that hands its hook functions to [`run`]; see src/main.rs and examples/.

pub mod auth;
mod health;
pub mod json;
mod listener;
pub mod logging;
pub mod metrics;
mod pool;
pub mod proto;
mod reflection;
mod server;
pub mod settings;

pub use server::{run, Call};
