//! Status write-back for the kubernetes store: each l7mp object's computed status, written to its `/status`
//! subresource by the replica that holds the leader-election Lease ([`crate::leader`]).
//!
//! After every computation (and every [`RESYNC`], since agents' ACKs change the counts without one) the leader lists
//! the objects and, for each whose status the last computation covered, builds the status the CRD declares:
//! `state`, `reason`, `agents: {placed, acked, nacked}` and the condition `Accepted` (`True`/`False`, reason
//! `Accepted`/`Invalid`, the field-path reason as its message, `observedGeneration`, `lastTransitionTime` kept while
//! the condition's status stays). It writes (a JSON merge patch of `/status`) only what differs from the status the
//! object already has, so a replica that becomes leader writes nothing that is already right.
//!
//! **No loop**: a status write changes the object's `resourceVersion` but not its value (the store's values have no
//! status), so the store's watch reports no event for it and nothing is recomputed; the status written holds
//! nothing that depends on the revision (no `observedRevision`: `observedGeneration` says which spec it describes).
//! An object counts as covered when the computation saw its current revision, or when the only write since was
//! this writer's own status write.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use l7mp_api::resource::ResourceKind;
use l7mp_api::time::rfc3339;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::controller::ControlPlane;
use crate::leader::Leadership;
use crate::store::{Key, KubernetesStore, StoreError};

/// How often the leader compares the statuses even without a computation (for the ACK counts).
pub const RESYNC: Duration = Duration::from_secs(2);

/// The status writer of one replica.
pub struct StatusWriter {
    cp: Arc<ControlPlane>,
    store: KubernetesStore,
    leadership: watch::Receiver<Leadership>,
    /// The revision each object got from this writer's last status write.
    written: std::sync::Mutex<HashMap<Key, u64>>,
    writes: AtomicU64,
}

impl StatusWriter {
    pub fn new(cp: Arc<ControlPlane>, store: KubernetesStore, leadership: watch::Receiver<Leadership>) -> Arc<Self> {
        Arc::new(StatusWriter {
            cp,
            store,
            leadership,
            written: Default::default(),
            writes: AtomicU64::new(0),
        })
    }

    /// Starts leader election (a Lease in the store's namespace, see [`crate::leader::LeaseConfig::new`] for the
    /// identity) and the status writer for `cp`; keep the returned [`crate::leader::Election`] alive.
    pub fn start(
        cp: Arc<ControlPlane>,
        store: KubernetesStore,
        lease: crate::leader::LeaseConfig,
    ) -> (crate::leader::Election, Arc<StatusWriter>) {
        let election = crate::leader::Election::start(store.client().clone(), lease);
        cp.set_leadership(election.subscribe());
        let writer = StatusWriter::new(cp, store, election.subscribe());
        tokio::spawn(writer.clone().run());
        (election, writer)
    }

    /// How many status writes this replica made.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Writes statuses while leader, until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut leadership = self.leadership.clone();
        let mut seen = 0;
        loop {
            tokio::select! {
                r = self.cp.computed_after(seen) => seen = r,
                // The election stopped: so does writing.
                r = leadership.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
            if !leadership.borrow().leader {
                continue;
            }
            if let Err(e) = self.sync().await {
                tracing::debug!("status write-back: {e}");
            }
        }
    }

    /// One pass over every object.
    pub async fn sync(&self) -> Result<(), StoreError> {
        for kind in ResourceKind::ALL {
            for object in self.store.objects(kind).await? {
                if !self.leadership.borrow().leader {
                    return Ok(());
                }
                self.sync_object(kind, &object).await?;
            }
        }
        Ok(())
    }

    async fn sync_object(&self, kind: ResourceKind, object: &Value) -> Result<(), StoreError> {
        let meta = &object["metadata"];
        let key = Key::new(
            kind.name(),
            meta["namespace"].as_str().unwrap_or_default(),
            meta["name"].as_str().unwrap_or_default(),
        );
        let Some(computed) = self.cp.status_of(&key) else {
            return Ok(());
        };
        let revision = meta["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or_default();
        let mine = self
            .written
            .lock()
            .map(|w| w.get(&key) == Some(&revision))
            .unwrap_or(false);
        if computed.observed_revision != revision && !mine {
            // Changed since the computation: the next one covers it.
            return Ok(());
        }
        let current = object.get("status").cloned().unwrap_or(Value::Null);
        let desired = desired_status(
            &self.cp.status_json(&key, 0),
            meta["generation"].as_i64(),
            &current,
            SystemTime::now(),
        );
        if comparable(&desired) == comparable(&current) {
            return Ok(());
        }
        if let Some(r) = self.store.write_status(&key, desired).await? {
            self.writes.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut w) = self.written.lock() {
                w.insert(key, r);
            }
        }
        Ok(())
    }
}

/// The status to write, from the control plane's status JSON (`{state, reason?, agents}`), the object's generation
/// and its current status (for `lastTransitionTime`).
pub fn desired_status(computed: &Value, generation: Option<i64>, current: &Value, now: SystemTime) -> Value {
    let accepted = computed["state"] == "Accepted";
    let condition_status = if accepted { "True" } else { "False" };
    let previous = current["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Accepted"));
    let since = match previous {
        Some(p) if p["status"] == condition_status => p["lastTransitionTime"].clone(),
        _ => json!(rfc3339(now)),
    };
    let reason = computed.get("reason").cloned().unwrap_or(Value::Null);
    let message = match reason.as_str() {
        Some(r) => r.to_string(),
        None if accepted => "valid, and translated for the agents it selects".to_string(),
        None => "not translated yet".to_string(),
    };
    let mut condition = json!({
        "type": "Accepted",
        "status": condition_status,
        "reason": if accepted { "Accepted" } else { "Invalid" },
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        condition["observedGeneration"] = json!(g);
    }
    json!({
        "state": computed["state"],
        // null removes what an earlier status had (merge patch).
        "reason": reason,
        "observedRevision": null,
        "agents": computed.get("agents").cloned().unwrap_or(json!({"placed": 0, "acked": 0, "nacked": 0})),
        "conditions": [condition],
    })
}

/// A status without nulls (absent and null are the same after a merge patch) and without transition times.
fn comparable(status: &Value) -> Value {
    match status {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, v)| !v.is_null() && k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), comparable(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_their_transition_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t1 = t0 + Duration::from_secs(60);
        let rejected = json!({"state": "Rejected", "reason": "spec.listener.spec.port: bad", "agents": {"placed": 0, "acked": 0, "nacked": 0}});
        let first = desired_status(&rejected, Some(1), &Value::Null, t0);
        assert_eq!(first["conditions"][0]["status"], "False");
        assert_eq!(first["conditions"][0]["reason"], "Invalid");
        assert_eq!(first["conditions"][0]["message"], "spec.listener.spec.port: bad");
        assert_eq!(first["conditions"][0]["observedGeneration"], 1);
        let again = desired_status(&rejected, Some(1), &first, t1);
        assert_eq!(
            again["conditions"][0]["lastTransitionTime"],
            first["conditions"][0]["lastTransitionTime"]
        );
        assert_eq!(comparable(&again), comparable(&first));
        let accepted = json!({"state": "Accepted", "agents": {"placed": 2, "acked": 2, "nacked": 0}});
        let next = desired_status(&accepted, Some(2), &first, t1);
        assert_eq!(next["conditions"][0]["status"], "True");
        assert_ne!(
            next["conditions"][0]["lastTransitionTime"],
            first["conditions"][0]["lastTransitionTime"]
        );
        assert!(next["reason"].is_null(), "the old reason is removed");
    }
}
