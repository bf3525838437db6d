//! Sessions as the REST API shows them: the original's session object (name, metadata, source, destination,
//! ingress/egress stages with their status, events with timestamps) plus traffic counters and timing.

use crate::session::{Role, SessionInfo, StageInfo};
use serde_json::{Value, json};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

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
        "events": events,
    })
}

/// `2026-11-25T21:45:58.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_729_558_123);
        assert_eq!(rfc3339(t), "2026-11-26T21:45:58.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
