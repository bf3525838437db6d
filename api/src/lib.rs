//! `l7mp-api`: the one typed model of l7mp's configuration.
//!
//! It reads the original l7mp's static configuration format (YAML or JSON: `admin`, `listeners`, `clusters`,
//! `rulelists`, `rules`, `routes`), gives inline objects the original's auto-generated names, checks every field and
//! every cross-reference, and returns a flat [`Config`] in which objects refer to each other by name. Errors name the
//! field path and the reason (`listeners[2].spec.port: expected an integer 1..65535, got "abc"`). It also owns the
//! JSON pointers ([`Pointer`]) and JSON predicates ([`Predicate`]) that rules evaluate against session metadata.
//!
//! [`dump`] writes a [`Config`] back in the original's format (whole, or object by object as the REST API shows
//! it), and [`edit`] applies the REST API's changes by editing that dump and loading it again.
//!
//! This crate does no I/O: callers hand it text and get values or [`ConfigError`]s back.

pub mod decode;
pub mod dump;
pub mod edit;
pub mod error;
pub mod load;
pub mod lookup;
pub mod model;
pub mod path;
pub mod pointer;
pub mod predicate;
pub mod resource;
pub mod time;
pub mod wire;
pub mod workload;

pub use edit::{Edit, EditError, RuleRef};
pub use error::{ConfigError, FieldError};
pub use load::{Format, config_from_value, parse_config};
pub use lookup::{RouteError, Rules};
pub use model::*;
pub use path::FieldPath;
pub use pointer::Pointer;
pub use predicate::Predicate;
