//! Sync: a rendezvous cluster. Every session routed to it joins the group named by the value of its metadata at
//! `query`; each message one member writes is delivered to every other member of the group (never back to the
//! sender). A member leaves when its session ends. Used, for instance, to let two UDP clients that carry the same
//! label talk to each other through the proxy.

use crate::stream::{CHANNEL_DEPTH, Reader, Writer};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The members of a group: an id each and the sender of their reader's channel.
type Members = Vec<(u64, mpsc::Sender<Bytes>)>;

/// The groups of one Sync cluster.
#[derive(Default)]
pub struct SyncHub {
    groups: Mutex<HashMap<String, Members>>,
    next_id: AtomicU64,
}

/// A session's membership in a group: writing broadcasts, dropping leaves.
pub struct SyncPort {
    hub: Arc<SyncHub>,
    group: String,
    id: u64,
}

impl SyncHub {
    /// Joins `group`; returns the member's reader (what others send) and writer (broadcast).
    pub fn join(self: &Arc<Self>, group: String) -> (Reader, Writer) {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.groups.lock() {
            g.entry(group.clone()).or_default().push((id, tx));
        }
        (
            Reader::Chan(rx),
            Writer::Sync(Some(SyncPort {
                hub: self.clone(),
                group,
                id,
            })),
        )
    }

    /// Members currently in `group`.
    pub fn members(&self, group: &str) -> usize {
        self.groups
            .lock()
            .map(|g| g.get(group).map_or(0, Vec::len))
            .unwrap_or(0)
    }
}

impl SyncPort {
    /// Delivers the messages to every other member; a member that is not keeping up loses them (datagram
    /// semantics) instead of stalling the group.
    pub fn broadcast(&self, msgs: &[Bytes]) {
        let Ok(groups) = self.hub.groups.lock() else { return };
        let Some(members) = groups.get(&self.group) else { return };
        for (id, tx) in members {
            if *id == self.id {
                continue;
            }
            for m in msgs {
                if tx.try_send(m.clone()).is_err() {
                    crate::metrics::dropped(crate::metrics::DropReason::SyncQueueFull, 1);
                    tracing::debug!(group = %self.group, "Sync member queue full, message dropped");
                }
            }
        }
    }
}

impl Drop for SyncPort {
    fn drop(&mut self) {
        if let Ok(mut g) = self.hub.groups.lock()
            && let Some(members) = g.get_mut(&self.group)
        {
            members.retain(|(id, _)| *id != self.id);
            if members.is_empty() {
                g.remove(&self.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn members_hear_each_other_not_themselves() {
        let hub = Arc::new(SyncHub::default());
        let (mut ra, mut wa) = hub.join("g".into());
        let (mut rb, _wb) = hub.join("g".into());
        let (mut rc, _wc) = hub.join("other".into());
        assert_eq!(hub.members("g"), 2);
        wa.write(&mut vec![Bytes::from_static(b"hi")]).await.expect("write");
        let mut arena = bytes::BytesMut::new();
        let mut got = Vec::new();
        rb.read(&mut arena, &mut got).await.expect("read");
        assert_eq!(got, vec![Bytes::from_static(b"hi")]);
        let mut none = Vec::new();
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), ra.read(&mut arena, &mut none)).await;
        assert!(quiet.is_err(), "the sender does not hear itself");
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), rc.read(&mut arena, &mut none)).await;
        assert!(quiet.is_err(), "another group hears nothing");
        drop(wa);
        assert_eq!(hub.members("g"), 1);
    }
}
