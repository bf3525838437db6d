//! The object store: every object as JSON, one global resourceVersion counter (each write takes the next integer,
//! as etcd's revision does), and a bounded history of events that watches replay and that LIST rolls back to
//! serve an older resourceVersion. Whole-object semantics (create, update, delete) live in `write.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::resources::{Registry, ResourceType, TypeKey};
use crate::selectors::{FieldSelector, LabelSelector};

/// Namespace (`""` for cluster-scoped objects) and name; ordered like etcd keys.
pub type ObjKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One write. `object` is the state after it (for a delete: the last state, carrying the delete's
/// resourceVersion), `prev` the state before (none for a create).
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub key: TypeKey,
    pub obj: ObjKey,
    pub kind: EventKind,
    pub object: Value,
    pub prev: Option<Value>,
}

/// Capacity of the channel that carries new events to open watches; a watch that falls this far behind is ended
/// (the client re-watches from its last resourceVersion, like after any dropped connection).
const WATCH_CHANNEL: usize = 4096;

pub struct Store {
    pub(crate) registry: Registry,
    /// The resourceVersion of the latest write.
    pub(crate) rv: u64,
    pub(crate) objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Value>>,
    /// Every event after `floor`, oldest first.
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// The oldest resourceVersion a watch can start from or a LIST can roll back to.
    floor: u64,
    tx: broadcast::Sender<Arc<Event>>,
    /// Server-side apply: the last configuration each field manager applied to an object.
    pub(crate) applied: HashMap<(TypeKey, ObjKey, String), Value>,
    /// Warnings of the current request (unknown fields pruned), taken by the HTTP layer after each write.
    pub(crate) warnings: Vec<String>,
    /// Next service ClusterIP (offset into 10.96.0.0/12).
    pub(crate) next_cluster_ip: u32,
}

/// What a LIST asked for.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// One page of a LIST.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(WATCH_CHANNEL);
        Store {
            registry: Registry::default(),
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            floor: 0,
            tx,
            applied: HashMap::new(),
            warnings: Vec::new(),
            next_cluster_ip: 1,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Drops the event history: watches and exact LISTs from any older resourceVersion get 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim();
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.floor = e.rv;
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Takes the next resourceVersion, stamps it on the object, stores or removes it, and publishes the event.
    pub(crate) fn commit(
        &mut self,
        key: &TypeKey,
        obj: ObjKey,
        kind: EventKind,
        mut object: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let map = self.objects.entry(key.clone()).or_default();
        match kind {
            EventKind::Deleted => {
                map.remove(&obj);
                self.applied.retain(|(k, o, _), _| !(k == key && *o == obj));
            }
            _ => {
                map.insert(obj.clone(), object.clone());
            }
        }
        let event = Arc::new(Event {
            rv: self.rv,
            key: key.clone(),
            obj,
            kind,
            object: object.clone(),
            prev,
        });
        self.history.push_back(event.clone());
        self.trim();
        // No receiver (no open watch) is not an error.
        let _ = self.tx.send(event);
        object
    }

    pub fn get(&self, key: &TypeKey, obj: &ObjKey) -> Option<&Value> {
        self.objects.get(key).and_then(|m| m.get(obj))
    }

    /// Every event after `rv`, oldest first, or 410 Expired when some of them are gone.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, ApiError> {
        if rv < self.floor {
            return Err(too_old(rv, self.floor));
        }
        if rv > self.rv {
            return Err(ApiError::too_large_resource_version(rv, self.rv));
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// The objects of one type as they were at `rv` (the current ones rolled back through the history).
    fn objects_at(&self, key: &TypeKey, rv: u64) -> Result<BTreeMap<ObjKey, Value>, ApiError> {
        if rv > self.rv {
            return Err(ApiError::too_large_resource_version(rv, self.rv));
        }
        if rv < self.floor {
            return Err(too_old(rv, self.floor));
        }
        let mut m = self.objects.get(key).cloned().unwrap_or_default();
        for e in self
            .history
            .iter()
            .rev()
            .take_while(|e| e.rv > rv)
            .filter(|e| e.key == *key)
        {
            match (&e.kind, &e.prev) {
                (EventKind::Added, _) => {
                    m.remove(&e.obj);
                }
                (_, Some(prev)) => {
                    m.insert(e.obj.clone(), prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(m)
    }

    /// A LIST: the matching objects of `t` in `namespace` (all namespaces when `None`), sorted by namespace and
    /// name, at the resourceVersion the options ask for, one page at a time.
    pub fn list(&self, t: &ResourceType, namespace: Option<&str>, opts: &ListOptions) -> Result<ListPage, ApiError> {
        let key = t.key();
        let (at, start) = match &opts.continue_token {
            Some(token) => {
                if opts
                    .resource_version
                    .as_deref()
                    .is_some_and(|rv| !rv.is_empty() && rv != "0")
                {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rv, start) = decode_continue(token)?;
                if rv < self.floor {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ));
                }
                (rv, Some(start))
            }
            None => (self.list_rv(opts)?, None),
        };
        let objects = if at == self.rv {
            self.objects.get(&key).cloned().unwrap_or_default()
        } else {
            self.objects_at(&key, at)?
        };
        let mut matching = objects.into_iter().filter(|((ns, _), o)| {
            namespace.is_none_or(|want| want == ns) && opts.labels.matches(o) && opts.fields.matches(o)
        });
        let mut items = Vec::new();
        let mut last = None;
        let limit = opts.limit.filter(|l| *l > 0);
        for (k, o) in matching.by_ref() {
            if start.as_ref().is_some_and(|s| k <= *s) {
                continue;
            }
            items.push(o);
            last = Some(k);
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let rest: Vec<_> = matching.filter(|(k, _)| start.as_ref().is_none_or(|s| k > s)).collect();
        let (continue_token, remaining) = match (limit, last) {
            (Some(_), Some(last)) if !rest.is_empty() => {
                let selective = opts.labels != LabelSelector::default() || opts.fields != FieldSelector::default();
                (
                    Some(encode_continue(at, &last)),
                    (!selective).then_some(rest.len() as u64),
                )
            }
            _ => (None, None),
        };
        Ok(ListPage {
            items,
            resource_version: at,
            continue_token,
            remaining,
        })
    }

    /// The resourceVersion a LIST without a continue token is served at.
    fn list_rv(&self, opts: &ListOptions) -> Result<u64, ApiError> {
        let rv = opts.resource_version.as_deref().unwrap_or("");
        let exact = match opts.resource_version_match.as_deref() {
            None | Some("") => false,
            Some("Exact") => true,
            Some("NotOlderThan") => false,
            Some(other) => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "meta.k8s.io",
                    "",
                    &[(
                        "resourceVersionMatch".to_owned(),
                        format!("Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""),
                    )],
                ));
            }
        };
        if rv.is_empty() {
            if opts.resource_version_match.as_deref().is_some_and(|m| !m.is_empty()) {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "meta.k8s.io",
                    "",
                    &[(
                        "resourceVersionMatch".to_owned(),
                        "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".to_owned(),
                    )],
                ));
            }
            return Ok(self.rv);
        }
        let n: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
        if n > self.rv {
            return Err(ApiError::too_large_resource_version(n, self.rv));
        }
        if exact {
            if n == 0 {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "meta.k8s.io",
                    "",
                    &[(
                        "resourceVersionMatch".to_owned(),
                        "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".to_owned(),
                    )],
                ));
            }
            return Ok(n);
        }
        Ok(self.rv)
    }
}

pub(crate) fn too_old(asked: u64, oldest: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {asked} ({oldest})"))
}

fn encode_continue(rv: u64, last: &ObjKey) -> String {
    use base64::Engine;
    let start = format!("{}/{}\u{0}", last.0, last.1);
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": start });
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, ObjKey), ApiError> {
    use base64::Engine;
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad("not base64"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad("not JSON"))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
    }
    let rv = v["rv"].as_u64().ok_or_else(|| bad("no resourceVersion"))?;
    let start = v["start"]
        .as_str()
        .and_then(|s| s.strip_suffix('\u{0}'))
        .ok_or_else(|| bad("no start key"))?;
    let (ns, name) = start.split_once('/').ok_or_else(|| bad("bad start key"))?;
    Ok((rv, (ns.to_owned(), name.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Gvr;

    fn put(s: &mut Store, ns: &str, name: &str, app: &str) {
        let t = s.registry.find(&Gvr::core("configmaps")).cloned().expect("builtin");
        let prev = s.get(&t.key(), &(ns.to_owned(), name.to_owned())).cloned();
        let kind = if prev.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        let o = json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": app}}});
        s.commit(&t.key(), (ns.to_owned(), name.to_owned()), kind, o, prev);
    }

    fn names(p: &ListPage) -> Vec<String> {
        p.items
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn pages_are_consistent_and_old_versions_roll_back() {
        let mut s = Store::new(100);
        let t = s.registry.find(&Gvr::core("configmaps")).cloned().expect("builtin");
        for n in ["a", "b", "c"] {
            put(&mut s, "ns", n, "x");
        }
        let mut opts = ListOptions {
            limit: Some(2),
            ..Default::default()
        };
        let p1 = s.list(&t, Some("ns"), &opts).expect("page 1");
        assert_eq!(
            (names(&p1), p1.remaining, p1.resource_version),
            (vec!["a".into(), "b".into()], Some(1), 3)
        );
        put(&mut s, "ns", "d", "x");
        put(&mut s, "ns", "c", "y");
        opts.continue_token = p1.continue_token.clone();
        let p2 = s.list(&t, Some("ns"), &opts).expect("page 2");
        assert_eq!(names(&p2), ["c"]);
        assert_eq!(
            p2.items[0]["metadata"]["labels"]["app"], "x",
            "served at the first page's version"
        );
        assert!(p2.continue_token.is_none());
        let exact = ListOptions {
            resource_version: Some("2".into()),
            resource_version_match: Some("Exact".into()),
            ..Default::default()
        };
        assert_eq!(names(&s.list(&t, None, &exact).expect("exact")), ["a", "b"]);
        s.compact();
        assert_eq!(s.list(&t, None, &exact).expect_err("compacted").code, 410);
        assert_eq!(s.list(&t, Some("ns"), &opts).expect_err("compacted").code, 410);
        assert_eq!(s.events_since(1).expect_err("compacted").code, 410);
        assert!(s.events_since(5).expect("current").is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut s = Store::new(2);
        for n in ["a", "b", "c", "d"] {
            put(&mut s, "ns", n, "x");
        }
        assert_eq!(s.floor, 2);
        assert_eq!(s.events_since(2).expect("kept").len(), 2);
        assert_eq!(
            s.events_since(1).expect_err("dropped").message,
            "too old resource version: 1 (2)"
        );
    }
}
