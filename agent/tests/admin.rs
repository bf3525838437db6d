//! The admin API end to end, through the real agent: every `/api/v1` route with its success and error paths (status
//! codes and `{status, message, content}` bodies), the admin listener's `/live`, `/ready` and `/config`, the API
//! served the original's way (an HTTP listener routed to an `L7mpController` cluster), sessions (listing, stages,
//! counters, `DELETE`, `options.track`), and changes that take effect on traffic.

#![allow(clippy::unwrap_used)]

mod common;
use common::api::*;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect()
}

fn udp_echo_once(port: u16, msg: &[u8]) -> Vec<u8> {
    let s = udp_client(port);
    s.send(msg).unwrap();
    recv(&s)
}

#[test]
fn objects_crud_with_the_original_status_codes_and_the_fixes() {
    let (udp, tcp_up) = (quiet_port(), tcp_echo_server());
    let yaml = format!(
        "
listeners:
  - name: udp
    spec: {{ protocol: UDP, port: {udp} }}
    rules:
      - action: {{ route: {{ destination: echo }} }}
clusters:
  - name: echo
    spec: {{ protocol: Echo }}
  - name: up
    spec: {{ protocol: TCP, port: {tcp_up} }}
    endpoints: [ {{ name: up-1, spec: {{ address: 127.0.0.1 }} }} ]
"
    );
    let (_agent, p) = start_with_admin(&yaml);

    // Health and the configuration in force.
    assert_eq!(call(p, "GET", "/live", None), (200, json!({"live": true})));
    assert_eq!(call(p, "GET", "/ready", None), (200, json!({"ready": true})));
    let (s, cfg) = call(p, "GET", "/api/v1/config", None);
    assert_eq!(s, 200);
    for key in [
        "admin",
        "listeners",
        "clusters",
        "rulelists",
        "rules",
        "routes",
        "endpoints",
        "sessions",
    ] {
        assert!(cfg.get(key).is_some(), "config lacks {key}: {cfg}");
    }
    assert_eq!(names(&cfg["endpoints"]), ["up-1"]);
    let (s, admin) = call(p, "GET", "/api/v1/admin", None);
    assert_eq!(s, 200);
    assert!(admin["version"].is_string(), "{admin}");

    // Listeners: list, get, add (inline rules get generated names), errors.
    let (_, ls) = call(p, "GET", "/api/v1/listeners", None);
    assert_eq!(names(&ls), ["udp"]);
    assert_eq!(call(p, "GET", "/api/v1/listeners/udp", None).1["spec"]["port"], udp);
    assert_error(p, "GET", "/api/v1/listeners/nope", None, 404, "\"nope\"");
    let tcp = quiet_port();
    let listener = json!({"listener": {"name": "tcp", "spec": {"protocol": "TCP", "port": tcp},
        "rules": [{"action": {"route": {"destination": "up"}}}]}});
    assert_ok(p, "POST", "/api/v1/listeners", Some(listener.clone()));
    assert_eq!(round_trip(tcp_client(tcp), b"hello".to_vec()), b"hello");
    assert_error(p, "POST", "/api/v1/listeners", Some(listener), 400, "already exists");
    let bad = json!({"listener": {"name": "bad", "spec": {"protocol": "TCP", "port": "abc"}, "rules": "x"}});
    assert_error(p, "POST", "/api/v1/listeners", Some(bad), 400, "listener.spec.port");
    assert_error(
        p,
        "POST",
        "/api/v1/listeners",
        Some(json!({"lisener": {}})),
        400,
        "listener: missing",
    );
    // A port in use: validated, but cannot be put in force; nothing changes.
    let taken = json!({"listener": {"name": "dup-port", "spec": {"protocol": "TCP", "port": tcp},
        "rules": [{"action": {"route": {"destination": "echo"}}}]}});
    assert_error(p, "POST", "/api/v1/listeners", Some(taken), 400, "cannot listen");
    assert_eq!(names(&call(p, "GET", "/api/v1/listeners", None).1), ["udp", "tcp"]);
    // Wrong and missing content types are 415 (the original answered 500).
    let (s, _, body) = http(p, "POST", "/api/v1/listeners", Some("text/plain"), "{}");
    assert_eq!(s, 415, "{body}");
    let (s, _, _) = http(p, "POST", "/api/v1/listeners", None, "{}");
    assert_eq!(s, 415);
    // YAML bodies.
    let (s, _, body) = http(
        p,
        "POST",
        "/api/v1/clusters",
        Some("text/yaml"),
        "cluster:\n  name: discard\n  spec: {protocol: Discard}\n",
    );
    assert_eq!(s, 200, "{body}");

    // PUT updates in place: the listener keeps its port, its new rules route to Echo.
    let put = json!({"listener": {"name": "tcp", "spec": {"protocol": "TCP", "port": tcp},
        "rules": [{"action": {"route": {"destination": "echo"}}}]}});
    assert_ok(p, "PUT", "/api/v1/listeners/tcp", Some(put.clone()));
    assert_eq!(round_trip(tcp_client(tcp), b"again".to_vec()), b"again");
    assert_error(p, "PUT", "/api/v1/listeners/other", Some(put), 400, "named");
    assert_error(
        p,
        "PUT",
        "/api/v1/listeners/ghost",
        Some(json!({"listener": {"name": "ghost", "spec": {"protocol": "TCP", "port": 1}, "rules": "x"}})),
        404,
        "ghost",
    );

    // Clusters and endpoints (GET /endpoints/{name} works; the original always failed).
    let (_, cs) = call(p, "GET", "/api/v1/clusters", None);
    assert_eq!(names(&cs), ["echo", "up", "discard"]);
    assert_eq!(call(p, "GET", "/api/v1/clusters/up", None).1["endpoints"], 1);
    assert_eq!(
        call(p, "GET", "/api/v1/clusters/up?recursive=true", None).1["endpoints"][0]["name"],
        "up-1"
    );
    assert_eq!(
        names(&call(p, "GET", "/api/v1/clusters/up/endpoints", None).1),
        ["up-1"]
    );
    assert_error(p, "GET", "/api/v1/clusters/nope/endpoints", None, 404, "nope");
    assert_ok(
        p,
        "POST",
        "/api/v1/clusters/up/endpoints",
        Some(json!({"endpoint": {"name": "up-2", "spec": {"address": "127.0.0.2"}, "weight": 2}})),
    );
    assert_eq!(
        call(p, "GET", "/api/v1/endpoints/up-2", None),
        (
            200,
            json!({"name": "up-2",
        "spec": {"address": "127.0.0.2"}, "weight": 2})
        )
    );
    assert_ok(
        p,
        "PUT",
        "/api/v1/endpoints/up-2",
        Some(json!({"endpoint": {"name": "up-2", "spec": {"address": "127.0.0.3"}, "weight": 5}})),
    );
    assert_eq!(call(p, "GET", "/api/v1/endpoints/up-2", None).1["weight"], 5);
    assert_eq!(names(&call(p, "GET", "/api/v1/endpoints", None).1), ["up-1", "up-2"]);
    assert_ok(p, "DELETE", "/api/v1/endpoints/up-2", None);
    assert_error(p, "GET", "/api/v1/endpoints/up-2", None, 404, "up-2");
    assert_error(p, "DELETE", "/api/v1/endpoints/up-2", None, 404, "up-2");
    // A cluster still referenced by a route cannot go; the error names the route.
    assert_error(p, "DELETE", "/api/v1/clusters/echo", None, 400, "not defined");
    assert_ok(p, "DELETE", "/api/v1/clusters/discard", None);
    assert_error(p, "DELETE", "/api/v1/clusters/discard", None, 404, "discard");

    // Rules, routes and rulelists, and rules at positions.
    let tcp_list = call(p, "GET", "/api/v1/listeners/tcp", None).1["rules"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(names(&call(p, "GET", "/api/v1/rulelists", None).1).contains(&tcp_list));
    assert_ok(
        p,
        "POST",
        "/api/v1/routes",
        Some(json!({"route": {"name": "to-up", "destination": "up"}})),
    );
    assert_ok(
        p,
        "POST",
        "/api/v1/rules",
        Some(
            json!({"rule": {"name": "r-up", "match": {"op": "test", "path": "/TCP/dst_port", "value": 1},
            "action": {"route": "to-up"}}}),
        ),
    );
    assert_error(
        p,
        "POST",
        "/api/v1/rules",
        Some(json!({"rule": {"name": "r-bad", "action": {"route": "nope"}}})),
        400,
        "route \"nope\" is not defined",
    );
    let at = |i: usize| format!("/api/v1/rulelists/{tcp_list}/rules/{i}");
    assert_ok(p, "POST", &at(0), Some(json!({"rule": "r-up"})));
    assert_eq!(call(p, "GET", &at(0), None).1["name"], "r-up");
    assert_eq!(
        call(p, "GET", &format!("{}?recursive=true", at(0)), None).1["action"]["route"]["name"],
        "to-up"
    );
    assert_error(p, "GET", &at(9), None, 404, "no rule at position 9");
    assert_error(p, "POST", &at(9), Some(json!({"rule": "r-up"})), 400, "position 9");
    assert_ok(
        p,
        "POST",
        &at(2),
        Some(json!({"rule": {"name": "r-last", "action": {"route": "to-up"}}})),
    );
    assert_eq!(
        call(p, "GET", &format!("/api/v1/rulelists/{tcp_list}"), None).1["rules"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_ok(p, "DELETE", &format!("/api/v1/rulelists/{tcp_list}/rules/r-last"), None);
    assert_ok(p, "DELETE", &at(0), None);
    assert_error(p, "DELETE", &at(5), None, 400, "position 5");
    // PUT a route's destination; PUT a rule.
    assert_ok(
        p,
        "PUT",
        "/api/v1/routes/to-up",
        Some(json!({"route": {"name": "to-up", "destination": "echo"}})),
    );
    assert_eq!(call(p, "GET", "/api/v1/routes/to-up", None).1["destination"], "echo");
    assert_ok(
        p,
        "PUT",
        "/api/v1/rules/r-up",
        Some(json!({"rule": {"name": "r-up", "action": {"route": "to-up"}}})),
    );
    assert_ok(
        p,
        "POST",
        "/api/v1/rulelists",
        Some(json!({"rulelist": {"name": "rl", "rules": ["r-up"]}})),
    );
    assert_eq!(call(p, "GET", "/api/v1/rulelists/rl", None).1["rules"], json!(["r-up"]));
    assert_error(p, "DELETE", "/api/v1/rules/r-up", None, 400, "not defined");
    assert_ok(p, "DELETE", "/api/v1/rulelists/rl", None);
    assert_ok(p, "DELETE", "/api/v1/rules/r-up", None);
    // Removing a rule from a rulelist keeps the rule: it still refers to the route.
    assert_error(
        p,
        "DELETE",
        "/api/v1/routes/to-up",
        None,
        400,
        "rules[\"r-last\"].action.route",
    );
    assert_ok(p, "DELETE", "/api/v1/rules/r-last", None);
    assert_ok(p, "DELETE", "/api/v1/routes/to-up", None);
    assert_error(p, "GET", "/api/v1/routes/to-up", None, 404, "to-up");
    assert_error(p, "GET", "/api/v1/rules/r-up", None, 404, "r-up");
    assert_error(p, "GET", "/api/v1/rulelists/rl", None, 404, "rl");

    // Lists of rules and routes; PUT of a rulelist and of a cluster.
    assert!(
        names(&call(p, "GET", "/api/v1/rules", None).1)
            .iter()
            .any(|n| n.starts_with(&tcp_list))
    );
    let (s, routes) = call(p, "GET", "/api/v1/routes?recursive=true", None);
    assert_eq!(s, 200);
    assert_eq!(routes[0]["destination"]["name"], "echo", "{routes}");
    let rules = call(p, "GET", &format!("/api/v1/rulelists/{tcp_list}"), None).1["rules"].clone();
    assert_ok(
        p,
        "PUT",
        &format!("/api/v1/rulelists/{tcp_list}"),
        Some(json!({"rulelist": {"rules": rules}})),
    );
    assert_error(
        p,
        "PUT",
        &format!("/api/v1/rulelists/{tcp_list}"),
        Some(json!({"rulelist": {"rules": ["no-such-rule"]}})),
        400,
        "rule \"no-such-rule\" is not defined",
    );
    assert_ok(
        p,
        "PUT",
        "/api/v1/clusters/up",
        Some(
            json!({"cluster": {"name": "up", "spec": {"protocol": "TCP", "port": tcp_up},
            "endpoints": [{"name": "up-9", "spec": {"address": "127.0.0.1"}}]}}),
        ),
    );
    assert_eq!(
        names(&call(p, "GET", "/api/v1/clusters/up/endpoints", None).1),
        ["up-9"]
    );

    // A session of the listener, ended by the recursive delete below.
    let mut held = tcp_client(tcp);
    held.write_all(b"held").unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).unwrap();
    // Recursive delete takes the listener's generated rulelist, rules and routes, and its sessions, along.
    assert_ok(p, "DELETE", "/api/v1/listeners/tcp?recursive=true", None);
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        held.read(&mut buf).unwrap_or(0),
        0,
        "the deleted listener's session is still open"
    );
    assert_error(p, "GET", &format!("/api/v1/rulelists/{tcp_list}"), None, 404, &tcp_list);
    assert!(
        TcpStream::connect(("127.0.0.1", tcp)).is_err(),
        "the listener still accepts"
    );
    assert_error(p, "DELETE", "/api/v1/listeners/tcp", None, 404, "tcp");

    // Query parameters, unknown routes and methods.
    let (_, _, terse) = http(p, "GET", "/api/v1/listeners?format=terse", None, "");
    assert!(!terse.contains('\n'), "{terse}");
    assert_error(p, "GET", "/api/v1/listeners?format=pretty", None, 400, "format");
    assert_error(p, "GET", "/api/v1/nothing", None, 404, "Unknown API operation");
    assert_error(p, "PATCH", "/api/v1/listeners", None, 405, "method");
    let (s, doc) = call(p, "GET", "/api/v1/openapi.json", None);
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert!(doc["paths"]["/api/v1/listeners/{name}"]["put"].is_object());

    // The UDP listener never stopped.
    assert_eq!(udp_echo_once(udp, b"still"), b"still");
}

#[test]
fn whole_config_replace_is_atomic_and_config_dump_loads_back() {
    let (a, b) = (quiet_port(), quiet_port());
    let yaml = format!(
        "
listeners:
  - name: a
    spec: {{ protocol: UDP, port: {a} }}
    rules: [ {{ action: {{ route: {{ destination: echo }} }} }} ]
clusters:
  - name: echo
    spec: {{ protocol: Echo }}
"
    );
    let (_agent, p) = start_with_admin(&yaml);
    // A session that lives through the replacements.
    let live = udp_client(a);
    live.send(b"first").unwrap();
    assert_eq!(recv(&live), b"first");
    let (_, before) = call(p, "GET", "/api/v1/sessions", None);
    assert_eq!(names(&before).len(), 1);
    // The dump of the configuration in force is a valid configuration: replace with it plus a listener.
    let (_, mut doc) = call(p, "GET", "/config", None);
    doc["listeners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "b", "spec": {"protocol": "UDP", "port": b},
        "rules": [{"action": {"route": {"destination": "echo"}}}]}));
    assert_ok(p, "POST", "/api/v1/config", Some(doc.clone()));
    assert_eq!(udp_echo_once(b, b"to b"), b"to b");
    // An invalid whole configuration changes nothing.
    doc["listeners"][1]["spec"]["port"] = json!(-1);
    doc["listeners"][0]["spec"]["port"] = json!(quiet_port());
    assert_error(p, "POST", "/api/v1/config", Some(doc), 400, "port");
    assert_eq!(udp_echo_once(a, b"to a"), b"to a");
    assert_eq!(udp_echo_once(b, b"to b"), b"to b");
    // YAML dump, too.
    let (s, ctype, yaml) = http(p, "GET", "/config?format=yaml", None, "");
    assert_eq!(s, 200);
    assert!(ctype.contains("yaml"), "{ctype}");
    let (s, _, body) = http(p, "POST", "/api/v1/config", Some("application/yaml"), &yaml);
    assert_eq!(s, 200, "{body}");
    assert_eq!(udp_echo_once(a, b"yaml"), b"yaml");
    // The first session went on through all of it, on the listener that was never restarted.
    live.send(b"still here").unwrap();
    assert_eq!(recv(&live), b"still here");
    let (_, after) = call(p, "GET", "/api/v1/sessions", None);
    let first = after
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == before[0]["name"])
        .unwrap();
    assert_eq!(first["traffic"]["from_source"]["messages"], 2, "{first}");
}

#[test]
fn api_through_an_http_listener_routed_to_l7mp_controller() {
    let api = quiet_port();
    let yaml = format!(
        "
listeners:
  - name: controller
    spec: {{ protocol: HTTP, port: {api} }}
    rules:
      - action: {{ route: {{ destination: l7mp-controller }} }}
clusters:
  - name: l7mp-controller
    spec: {{ protocol: L7mpController }}
  - name: echo
    spec: {{ protocol: Echo }}
"
    );
    let _agent = Agent::start(&yaml);
    let (s, v) = call(api, "GET", "/api/v1/clusters", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(names(&v), ["l7mp-controller", "echo"]);
    let udp = quiet_port();
    assert_ok(
        api,
        "POST",
        "/api/v1/listeners",
        Some(
            json!({"listener": {"name": "u", "spec": {"protocol": "UDP", "port": udp},
            "rules": [{"action": {"route": {"destination": "echo"}}}]}}),
        ),
    );
    assert_eq!(udp_echo_once(udp, b"via controller"), b"via controller");
    assert_error(api, "GET", "/api/v1/listeners/nope", None, 404, "nope");
    let (s, _, _) = http(api, "POST", "/api/v1/listeners", Some("text/plain"), "x");
    assert_eq!(s, 415);
}

#[test]
fn sessions_are_listed_deleted_and_tracked() {
    let (tcp, tracked) = (quiet_port(), quiet_port());
    let up = tcp_echo_server();
    let yaml = format!(
        "
listeners:
  - name: tcp
    spec: {{ protocol: TCP, port: {tcp} }}
    rules: [ {{ action: {{ route: {{ destination: up }} }} }} ]
  - name: tracked
    spec: {{ protocol: TCP, port: {tracked} }}
    rules: [ {{ action: {{ route: {{ destination: echo, ingress: [ echo ] }} }} }} ]
    options: {{ track: 60 }}
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {up} }}
    endpoints: [ {{ name: up-1, spec: {{ address: 127.0.0.1 }} }} ]
  - name: echo
    spec: {{ protocol: Echo }}
"
    );
    let (_agent, p) = start_with_admin(&yaml);
    let mut c = tcp_client(tcp);
    c.write_all(b"12345").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    let (_, list) = call(p, "GET", "/api/v1/sessions", None);
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"]["origin"] == "tcp")
        .unwrap()
        .clone();
    assert_eq!(s["status"], "CONNECTED", "{s}");
    assert_eq!(s["destination"]["origin"], "up");
    assert_eq!(s["destination"]["endpoint"]["name"], "up-1");
    assert_eq!(s["destination"]["status"], "CONNECTED");
    assert_eq!(s["traffic"]["from_source"]["bytes"], 5);
    assert_eq!(s["traffic"]["to_source"]["bytes"], 5);
    assert_eq!(s["source"]["listener"]["protocol"], "TCP");
    assert!(s["metadata"]["TCP"]["dst_port"] == tcp, "{s}");
    let events: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["INIT", "LOOKUP SUCCESS", "CONNECT"]);
    assert!(s["events"][0]["timestamp"].as_str().unwrap().ends_with('Z'));
    let name = s["name"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/sessions/{}", name.replace(':', "%3A"));
    assert_eq!(call(p, "GET", &path, None).1["name"], name.as_str());
    // DELETE ends it: the client sees its connection close.
    assert_ok(p, "DELETE", &path, None);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        c.read(&mut buf).unwrap_or(0),
        0,
        "the session's connection is still open"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(p, "GET", &path, None).0 != 404 {
        assert!(Instant::now() < deadline, "the deleted session is still listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_error(p, "DELETE", &path, None, 404, "does not exist");

    // options.track keeps an ended session listed, with its chain stage and final counters.
    assert_eq!(round_trip(tcp_client(tracked), b"tracked".to_vec()), b"tracked");
    let deadline = Instant::now() + Duration::from_secs(5);
    let ended = loop {
        let (_, list) = call(p, "GET", "/api/v1/sessions", None);
        if let Some(s) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"]["origin"] == "tracked" && s["status"] == "DESTROYED")
        {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no ended tracked session in {list}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ended["ingress"][0]["origin"], "echo", "{ended}");
    assert_eq!(ended["traffic"]["from_source"]["bytes"], 7);
    assert!(ended["ended"].is_string());
    let events: Vec<&str> = ended["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"END"), "{ended}");
}

/// A UDP client that sends a numbered datagram every few milliseconds on its own thread and keeps every answer.
struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<Vec<u8>>)>,
}

impl Sender {
    fn start(port: u16) -> Sender {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = udp_client(port);
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut sent, mut got) = (0usize, Vec::new());
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                s.send(format!("m{sent}").as_bytes()).unwrap();
                sent += 1;
                let until = Instant::now() + Duration::from_millis(5);
                while Instant::now() < until {
                    if let Ok(n) = s.recv(&mut buf) {
                        got.push(buf[..n].to_vec());
                    }
                }
            }
            // Late answers.
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            while let Ok(n) = s.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            (sent, got)
        });
        Sender { stop, thread }
    }

    fn finish(self) -> (usize, Vec<Vec<u8>>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Who answered a datagram: the upstreams prefix their answers with their name.
fn via(port: u16, msg: &[u8]) -> String {
    let answer = udp_echo_once(port, msg);
    String::from_utf8_lossy(&answer)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn live_reconfiguration_under_traffic() {
    let x = udp_server(|m, _| [b"X:".as_slice(), m].concat());
    let y = udp_server(|m, _| [b"Y:".as_slice(), m].concat());
    let (a, b) = (quiet_port(), quiet_port());
    let yaml = format!(
        "
listeners:
  - name: a
    spec: {{ protocol: UDP, port: {a} }}
    rules: a-rules
rulelists:
  - name: a-rules
    rules:
      - name: default
        action: {{ route: main }}
routes:
  - name: main
    destination: cx
clusters:
  - name: cx
    spec: {{ protocol: UDP, port: {x} }}
    endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ]
  - name: cy
    spec: {{ protocol: UDP, port: {y} }}
    endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ]
"
    );
    let (mut agent, p) = start_with_admin(&yaml);
    // A client keeps sending through listener a → route main → cx for the whole test.
    let steady = Sender::start(a);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(via(a, b"before"), "X");

    // 1. Add a listener: it serves at once.
    assert_ok(
        p,
        "POST",
        "/api/v1/listeners",
        Some(json!({"listener": {"name": "b", "spec": {"protocol": "UDP", "port": b},
            "rules": [{"action": {"route": {"destination": "cy"}}}]}})),
    );
    assert_eq!(via(b, b"new listener"), "Y");

    // 2. Insert a rule at position 0 that sends one client's new session elsewhere.
    let special = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let special_port = special.local_addr().unwrap().port();
    assert_ok(
        p,
        "POST",
        "/api/v1/rulelists/a-rules/rules/0",
        Some(
            json!({"rule": {"name": "special", "match": {"op": "test", "path": "/UDP/src_port", "value": special_port},
            "action": {"route": {"destination": "cy"}}}}),
        ),
    );
    special.connect(("127.0.0.1", a)).unwrap();
    special.set_read_timeout(Some(TIMEOUT)).unwrap();
    special.send(b"special").unwrap();
    assert!(
        recv(&special).starts_with(b"Y:"),
        "the rule at position 0 did not route the new session"
    );
    assert_eq!(via(a, b"others"), "X", "the rule at position 0 matched another client");

    // 3. PUT the route to a new destination: new sessions go there.
    assert_ok(
        p,
        "PUT",
        "/api/v1/routes/main",
        Some(json!({"route": {"name": "main", "destination": "cy"}})),
    );
    assert_eq!(via(a, b"after put"), "Y");

    // 4. Remove the cluster nothing refers to any more.
    assert_ok(p, "DELETE", "/api/v1/clusters/cx", None);
    assert_error(p, "GET", "/api/v1/clusters/cx", None, 404, "cx");
    assert_eq!(via(a, b"after delete"), "Y");
    std::thread::sleep(Duration::from_millis(300));

    // The session that started before every change kept its route (and the removed cluster's upstream) throughout.
    let (sent, got) = steady.finish();
    assert!(sent > 50, "the client sent only {sent} datagrams");
    assert!(
        got.iter().all(|m| m.starts_with(b"X:")),
        "the live session changed route"
    );
    assert!(
        got.len() * 100 >= sent * 98,
        "the live session lost answers: {} of {sent}",
        got.len()
    );
    assert!(agent.is_running(), "the agent died");
}

#[test]
fn log_level_changes_at_run_time() {
    let udp = quiet_port();
    let yaml = format!(
        "
admin: {{ log_level: info }}
listeners:
  - name: udp
    spec: {{ protocol: UDP, port: {udp} }}
    rules: [ {{ action: {{ route: {{ destination: echo }} }} }} ]
clusters:
  - name: echo
    spec: {{ protocol: Echo }}
"
    );
    let (agent, p) = start_with_admin(&yaml);
    assert_eq!(call(p, "GET", "/api/v1/admin", None).1["log_level"], "info");
    assert_error(
        p,
        "POST",
        "/api/v1/admin",
        Some(json!({"admin": {"log_level": "loud"}})),
        400,
        "admin.log_level",
    );
    assert_error(
        p,
        "POST",
        "/api/v1/admin",
        Some(json!({"admin": {"log_file": "/tmp/x"}})),
        400,
        "run time",
    );
    assert_error(
        p,
        "POST",
        "/api/v1/admin",
        Some(json!({"admin": {"colour": true}})),
        400,
        "unknown field",
    );
    assert_error(
        p,
        "POST",
        "/api/v1/admin",
        Some(json!({"log_level": "debug"})),
        400,
        "admin: missing",
    );
    assert_eq!(agent.count_log("DEBUG"), 0, "debug lines before the change");
    assert_ok(
        p,
        "POST",
        "/api/v1/admin",
        Some(json!({"admin": {"log_level": "verbose"}})),
    );
    assert_eq!(call(p, "GET", "/api/v1/admin", None).1["log_level"], "debug");
    // Every API request is logged at debug level now.
    assert_eq!(udp_echo_once(udp, b"x"), b"x");
    agent.wait_log("DEBUG");
    agent.wait_log("admin API request");
    assert_ok(
        p,
        "POST",
        "/api/v1/admin",
        Some(json!({"admin": {"log_level": "warn,l7mp_agent::admin=info"}})),
    );
    assert_eq!(
        call(p, "GET", "/api/v1/admin", None).1["log_level"],
        "warn,l7mp_agent::admin=info"
    );
}
