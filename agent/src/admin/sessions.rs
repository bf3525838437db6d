//! Sessions as the REST API shows them: the original's session object (name, metadata, source, destination,
//! ingress/egress stages with their status, events with timestamps) plus traffic counters and timing.

use crate::session::{Role, SessionInfo, StageInfo};
use l7mp_api::time::rfc3339;
use serde_json::{Value, json};
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

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
