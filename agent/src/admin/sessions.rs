//! Sessions as the REST API shows them: the original's session object (name, metadata, source, destination,
//! ingress/egress stages with their status, events with timestamps) plus traffic counters and timing.

use crate::session::{Role, SessionInfo, StageInfo};
use l7mp_api::time::rfc3339;
use serde_json::{Value, json};
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

/// Request headers that carry credentials; shown as `[redacted]` (rules still see them in the session's metadata).
const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Replaces credential headers (in any `headers` object of the metadata: HTTP requests, WebSocket upgrades) with
/// `[redacted]`, so that a reader of the sessions never sees another caller's token or cookie.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "headers"
                    && let Value::Object(h) = child
                {
                    for (name, value) in h.iter_mut() {
                        if SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
                            *value = Value::String("[redacted]".into());
                        }
                    }
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The JSON of one session. `listener_spec` is the dumped `spec` of the session's listener.
pub fn session_json(s: &SessionInfo, listener_spec: Value) -> Value {
    let status = s.status();
    let stages = s.stages();
    let stage = |st: &StageInfo| {
        json!({
            "origin": st.cluster,
            "endpoint": st.endpoint.as_ref().map(|e| json!({"name": e})),
            "status": st.status,
        })
    };
    let destination = stages
        .iter()
        .find(|st| st.role == Role::Destination)
        .map_or_else(|| json!({"status": "PENDING"}), stage);
    let chain = |role: Role| -> Vec<Value> { stages.iter().filter(|st| st.role == role).map(stage).collect() };
    let mut metadata = (*s.metadata()).clone();
    if let Value::Object(m) = &mut metadata {
        m.remove("name");
    }
    redact(&mut metadata);
    let ended = s.ended();
    let duration = ended
        .unwrap_or_else(SystemTime::now)
        .duration_since(s.started)
        .unwrap_or_default();
    let source_status = match status {
        crate::session::Status::Destroyed => "END",
        _ => "CONNECTED",
    };
    let events: Vec<Value> = s
        .events()
        .iter()
        .map(|e| json!({"event": e.kind, "timestamp": rfc3339(e.at), "message": e.message}))
        .collect();
    let st = &s.stats;
    json!({
        "name": s.name,
        "metadata": metadata,
        "source": {"origin": s.listener, "listener": listener_spec, "status": source_status},
        "destination": destination,
        "ingress": chain(Role::Ingress),
        "egress": chain(Role::Egress),
        "route": s.route(),
        "status": status.name(),
        "started": rfc3339(s.started),
        "ended": ended.map(rfc3339),
        "duration": duration.as_secs_f64(),
        "traffic": {
            "from_source": {"bytes": st.up_bytes.load(Relaxed), "messages": st.up_msgs.load(Relaxed)},
            "to_source": {"bytes": st.down_bytes.load(Relaxed), "messages": st.down_msgs.load(Relaxed)},
        },
        "offload": s.offload(),
        "events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_are_redacted_anywhere_in_the_metadata() {
        let mut v = json!({"HTTP": {"headers": {"Authorization": "Bearer s3cr3t", "cookie": "a=b", "host": "x"}},
                           "WS": [{"headers": {"x-api-key": "k"}}]});
        redact(&mut v);
        assert_eq!(v["HTTP"]["headers"]["Authorization"], "[redacted]");
        assert_eq!(v["HTTP"]["headers"]["cookie"], "[redacted]");
        assert_eq!(v["HTTP"]["headers"]["host"], "x");
        assert_eq!(v["WS"][0]["headers"]["x-api-key"], "[redacted]");
        assert!(!v.to_string().contains("s3cr3t"));
    }
}
