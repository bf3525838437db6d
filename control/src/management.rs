//! The Management API (`l7mp.management.v1.Management`, gRPC): Apply, Get, List, Delete, Watch and Agents over the
//! store, with each object's computed status added, and Status (the control plane's readiness). Every call is
//! authenticated and authorized first ([`crate::auth`]: reads need `reader`, writes `operator`, Rules `admin`). A store that cannot
//! be reached is `UNAVAILABLE` with the store's error and what was (not) written.
//!
//! Apply validates every object first (all or nothing; errors name the document and field:
//! `objects[1] (Target default/echo): spec.cluster.spec.port: expected an integer 1..65535, got "x"`), then writes
//! them, then waits (up to 5 s) for the control loop to cover the write so the answer carries the status.

use crate::auth::{Access, write_role};
use crate::controller::ControlPlane;
use crate::store::{Event, Key, Precondition, StoreError, Stored};
use l7mp_api::resource::{self, ResourceKind};
use l7mp_api::time::rfc3339;
use l7mp_api::wire::{from_struct, to_struct};
use l7mp_auth::Role;
use l7mp_protos::management::v1 as pb;
use pb::management_server::Management;
use serde_json::Value;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The Management service over a control plane.
pub struct ManagementService {
    cp: Arc<ControlPlane>,
    access: Arc<Access>,
}

impl ManagementService {
    /// Reports a store failure to the control plane (readiness follows what clients see) and maps it to a status.
    fn failed(&self, e: StoreError) -> Status {
        self.cp.store_result(Some(&e));
        store_error(e)
    }

    /// Like [`Self::failed`], for a write: says that nothing was written.
    fn write_failed(&self, e: StoreError, written: usize) -> Status {
        let s = self.failed(e);
        if s.code() != tonic::Code::Unavailable {
            return s;
        }
        let what = match written {
            0 => "nothing was written".to_string(),
            n => format!("the first {n} object(s) were written, the rest not; apply again"),
        };
        Status::unavailable(format!("{}; {what}", s.message()))
    }

    /// The service open to every caller that is not an agent (plaintext on loopback; tests).
    pub fn new(cp: Arc<ControlPlane>) -> pb::management_server::ManagementServer<ManagementService> {
        Self::with_access(cp, Access::open())
    }

    /// The service with its callers authenticated and authorized by `access` (see [`crate::auth`]).
    pub fn with_access(
        cp: Arc<ControlPlane>,
        access: Arc<Access>,
    ) -> pb::management_server::ManagementServer<ManagementService> {
        pb::management_server::ManagementServer::new(ManagementService { cp, access })
    }
}

fn store_error(e: StoreError) -> Status {
    match e {
        e @ StoreError::Conflict { .. } => Status::aborted(e.to_string()),
        e @ (StoreError::InvalidKey { .. } | StoreError::InvalidValue { .. }) => {
            Status::invalid_argument(e.to_string())
        }
        other => Status::unavailable(format!("the store is unreachable: {other}")),
    }
}

/// A kind as the user wrote it (`vsvc`, `targets`, `Route`) in its canonical name.
fn kind(s: &str) -> Result<String, Status> {
    ResourceKind::from_str(s).map(|k| k.to_string()).map_err(|_| {
        Status::invalid_argument(format!(
            "unknown kind {s:?} (expected VirtualService, Target, Route or Rule)"
        ))
    })
}

fn key_of(r: Option<pb::ObjectRef>) -> Result<Key, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("ref: missing"))?;
    if r.name.is_empty() {
        return Err(Status::invalid_argument("ref.name: missing"));
    }
    Ok(Key {
        kind: kind(&r.kind)?,
        namespace: if r.namespace.is_empty() {
            "default".into()
        } else {
            r.namespace
        },
        name: r.name,
    })
}

impl ManagementService {
    /// A stored object with its status, for the wire.
    fn out(&self, s: &Stored) -> pb::StoredObject {
        let mut v = s.value.clone();
        if let Value::Object(o) = &mut v {
            o.insert("status".into(), self.cp.status_json(&s.key, s.revision));
        }
        pb::StoredObject {
            object: to_struct(&v),
            revision: s.revision,
        }
    }
}

type WatchStream = Pin<Box<dyn futures_util::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Management for ManagementService {
    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self.access.check(&req, "Apply", Role::Operator)?;
        let objects = req.into_inner().objects;
        if objects.is_empty() {
            return Err(Status::invalid_argument("objects: nothing to apply"));
        }
        // Validate everything first: a bad object applies nothing.
        let mut parsed = Vec::with_capacity(objects.len());
        for (i, o) in objects.into_iter().enumerate() {
            let v = o.object.map_or(Value::Null, from_struct);
            let r = resource::parse_resource(&v).map_err(|e| {
                let what = match (
                    v.get("kind").and_then(Value::as_str),
                    v.pointer("/metadata/name").and_then(Value::as_str),
                ) {
                    (Some(k), Some(n)) => format!(" ({k} {n})"),
                    _ => String::new(),
                };
                Status::invalid_argument(format!("objects[{i}]{what}: {e}"))
            })?;
            let key = Key {
                kind: r.kind.to_string(),
                namespace: r.meta.namespace.clone(),
                name: r.meta.name.clone(),
            };
            let pre = if o.revision > 0 {
                Precondition::Revision(o.revision)
            } else {
                Precondition::None
            };
            // Status is derived: what a client sends (say, an object read back with `get -o yaml`) is not stored.
            let r = resource::Resource { status: None, ..r };
            Access::require(
                &caller,
                &format!(
                    "Apply of {} {}{}",
                    key.kind,
                    key.name,
                    if crate::auth::runs_command(&v) {
                        " (it defines a StdioFork cluster, which runs a command on the agents)"
                    } else {
                        ""
                    }
                ),
                write_role(&key.kind, Some(&v)),
            )?;
            parsed.push((key, resource::to_value(&r), pre));
        }
        let mut last = 0;
        let mut keys = Vec::with_capacity(parsed.len());
        for (key, value, pre) in parsed {
            last = self
                .cp
                .store()
                .put(&key, value, pre)
                .await
                .map_err(|e| self.write_failed(e, keys.len()))?;
            keys.push(key);
        }
        self.cp.kick();
        self.cp.computed(last, Duration::from_secs(5)).await;
        let mut out = Vec::with_capacity(keys.len());
        for k in &keys {
            if let Some(s) = self.cp.store().get(k).await.map_err(|e| self.failed(e))? {
                out.push(self.out(&s));
            }
        }
        Ok(Response::new(pb::ApplyResponse { objects: out }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::StoredObject>, Status> {
        self.access.check(&req, "Get", Role::Reader)?;
        let key = key_of(req.into_inner().r#ref)?;
        match self.cp.store().get(&key).await.map_err(|e| self.failed(e))? {
            Some(s) => Ok(Response::new(self.out(&s))),
            None => Err(Status::not_found(format!("{key} does not exist"))),
        }
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        self.access.check(&req, "List", Role::Reader)?;
        let r = req.into_inner();
        let k = if r.kind.is_empty() { None } else { Some(kind(&r.kind)?) };
        let ns = (!r.namespace.is_empty()).then_some(r.namespace.as_str());
        let crate::store::Listing {
            items: objects,
            revision,
        } = self
            .cp
            .store()
            .list(k.as_deref(), ns)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Response::new(pb::ListResponse {
            objects: objects.iter().map(|s| self.out(s)).collect(),
            revision,
        }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = self.access.check(&req, "Delete", Role::Operator)?;
        let key = key_of(req.into_inner().r#ref)?;
        Access::require(
            &caller,
            &format!("Delete of {} {}", key.kind, key.name),
            write_role(&key.kind, None),
        )?;
        match self
            .cp
            .store()
            .delete(&key, Precondition::None)
            .await
            .map_err(|e| self.write_failed(e, 0))?
        {
            Some(revision) => {
                self.cp.kick();
                self.cp.computed(revision, Duration::from_secs(5)).await;
                Ok(Response::new(pb::DeleteResponse { revision }))
            }
            None => Err(Status::not_found(format!("{key} does not exist"))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        use futures_util::StreamExt;
        self.access.check(&req, "Watch", Role::Reader)?;
        let r = req.into_inner();
        let want = if r.kind.is_empty() { None } else { Some(kind(&r.kind)?) };
        let store = self.cp.store().clone();
        // From 0: the current state first (as PUTs), then the changes after it.
        let (initial, from) = if r.from_revision == 0 {
            let l = store.list(want.as_deref(), None).await.map_err(|e| self.failed(e))?;
            let (objects, rev) = (l.items, l.revision);
            (objects, rev)
        } else {
            (Vec::new(), r.from_revision)
        };
        let events = store.watch(from).await.map_err(|e| self.failed(e))?;
        let to_ref = |k: &Key| pb::ObjectRef {
            kind: k.kind.clone(),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
        };
        let put = move |s: &Stored| pb::WatchEvent {
            r#type: pb::watch_event::Type::Put as i32,
            r#ref: Some(to_ref(&s.key)),
            object: Some(pb::StoredObject {
                object: to_struct(&s.value),
                revision: s.revision,
            }),
        };
        let first = futures_util::stream::iter(initial.iter().map(put).map(Ok).collect::<Vec<_>>());
        let want2 = want.clone();
        let live = events.filter_map(move |ev| {
            let want = want2.clone();
            async move {
                let keep = |k: &Key| want.as_deref().is_none_or(|w| w == k.kind);
                match ev {
                    Ok(Event::Put(s)) if keep(&s.key) => Some(Ok(put(&s))),
                    Ok(Event::Delete { key, .. }) if keep(&key) => Some(Ok(pb::WatchEvent {
                        r#type: pb::watch_event::Type::Delete as i32,
                        r#ref: Some(to_ref(&key)),
                        object: None,
                    })),
                    Ok(_) => None,
                    Err(e) => Some(Err(Status::data_loss(format!("{e}; watch again")))),
                }
            }
        });
        Ok(Response::new(Box::pin(first.chain(live))))
    }

    async fn agents(&self, req: Request<pb::AgentsRequest>) -> Result<Response<pb::AgentsResponse>, Status> {
        self.access.check(&req, "Agents", Role::Reader)?;
        let xds = self.cp.xds();
        let agents = self
            .cp
            .all_agents()
            .into_values()
            .map(|r| {
                let mut out = pb::Agent {
                    node_id: r.node_id.clone(),
                    labels: r.labels.clone().into_iter().collect(),
                    address: r.address.map(|i| i.to_string()).unwrap_or_default(),
                    connected_since: rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(r.since)),
                    replica: r.replica.clone(),
                    kind: r.kind.as_str().to_owned(),
                    ..Default::default()
                };
                // The exchange details of the agents served here.
                if let Some(a) = xds.and_then(|x| x.agent(&r.node_id)) {
                    out.acked_versions = a
                        .types
                        .iter()
                        .map(|(t, s)| (t.clone(), s.acked_version.clone()))
                        .collect();
                    out.last_nack = a.last_nack.as_ref().map(|n| n.message.clone()).unwrap_or_default();
                    out.last_nack_at = a.last_nack.as_ref().map(|n| rfc3339(n.at)).unwrap_or_default();
                    out.connected_since = rfc3339(a.connected_since);
                }
                out
            })
            .collect();
        Ok(Response::new(pb::AgentsResponse { agents }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.access.check(&req, "Status", Role::Reader)?;
        let (accepted, rejected) = self.cp.object_counts();
        let problem = self.cp.store_problem();
        Ok(Response::new(pb::StatusResponse {
            ready: self.cp.ready(),
            reason: self.cp.not_ready_reason().unwrap_or_default(),
            store: self.cp.store_url(),
            computed_revision: self.cp.computed_revision(),
            agents: self.cp.xds().map_or(0, |x| x.agents().len()) as u32,
            objects_accepted: accepted as u32,
            objects_rejected: rejected as u32,
            replica: self.cp.replica().to_string(),
            store_unreachable_since: problem.map(|p| rfc3339(p.since)).unwrap_or_default(),
            leadership: match self.cp.leadership() {
                None => String::new(),
                Some(l) if l.leader => format!("leader (Lease {})", l.lease),
                Some(l) if l.holder.is_empty() => format!("follower (Lease {}: no leader)", l.lease),
                Some(l) => format!("follower (Lease {}: leader {})", l.lease, l.holder),
            },
        }))
    }
}
