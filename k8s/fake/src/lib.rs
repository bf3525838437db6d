//! A faithful in-memory fake of the Kubernetes API server for tests: discovery, CRUD, patches (merge, JSON,
//! strategic for built-ins, server-side apply), watches with bookmarks and 410 Expired, and CRDs that define new
//! types, over plain HTTP on loopback, so that a real `kube::Client` and the real `kubectl` can talk to it.
//! See `docs/kubernetes-fake.md` for what it does and does not model.
//!
//! ```no_run
//! use l7mp_kube_fake::{FakeApiServer, Gvr, Options};
//! let server = FakeApiServer::start(Options::default()).expect("starts");
//! server.write_kubeconfig("/tmp/kubeconfig").expect("writes");
//! // ... run a client against server.url() ...
//! assert!(server.get(&Gvr::core("namespaces"), "", "default").is_some());
//! ```

#[cfg(feature = "client")]
mod client;
mod discovery;
mod error;
mod http;
mod kinds;
mod kubeconfig;
mod meta;
mod openapi;
mod patch;
mod query;
mod resources;
mod schema;
mod selectors;
mod server;
mod store;
mod table;
mod watch;
mod write;

pub use error::ApiError;
pub use http::RequestRecord;
pub use kubeconfig::render as render_kubeconfig;
pub use resources::Gvr;
pub use server::{FakeApiServer, Options, StartError};
