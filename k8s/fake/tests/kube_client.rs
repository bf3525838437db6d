//! The fake driven by a real `kube::Client`: CRUD, conflicts, status subresource, patches, selectors, paging,
//! watches with bookmarks, and the 410 path (`compact` + `break_watches` → the watcher relists, nothing lost).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use l7mp_kube_fake::{FakeApiServer, Gvr, Options};
use serde_json::{Value, json};

fn server() -> FakeApiServer {
    FakeApiServer::start(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
    .expect("fake starts")
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": [{ "name": "app", "image": "busybox" }] },
    }))
    .expect("a pod")
}

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name, "labels": labels }, "data": { "k": "v" } }))
        .expect("a configmap")
}

async fn install_crds(client: &kube::Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in common::crds() {
        let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("a CRD");
        let created = api.create(&PostParams::default(), &crd).await.expect("CRD created");
        let conditions = created.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{conditions:?}"
        );
    }
}

fn l7mp(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("l7mp.io", "v1", kind))
}

#[tokio::test]
async fn pods_crud_with_real_server_errors() {
    let fake = server();
    let pods: Api<Pod> = Api::default_namespaced(fake.client());
    let created = pods
        .create(&PostParams::default(), &pod("p1", json!({"app": "web"})))
        .await
        .expect("created");
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    let rv1: u64 = meta
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("numeric resourceVersion");
    assert_eq!(rv1, fake.resource_version());
    assert_eq!(created.status.and_then(|s| s.phase).as_deref(), Some("Pending"));

    let again = pods
        .create(&PostParams::default(), &pod("p1", json!({})))
        .await
        .expect_err("exists");
    assert_eq!(
        (common::code(&again), common::reason(&again).as_str()),
        (Some(409), "AlreadyExists")
    );
    let unnamed = pods
        .create(&PostParams::default(), &pod("", json!({})))
        .await
        .expect_err("no name");
    assert_eq!(
        (common::code(&unnamed), common::reason(&unnamed).as_str()),
        (Some(422), "Invalid")
    );
    let mut generated = pod("", json!({}));
    generated.metadata.generate_name = Some("gen-".to_owned());
    let g = pods
        .create(&PostParams::default(), &generated)
        .await
        .expect("generateName");
    assert!(
        g.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(fake.client());
    let e = namespaces
        .delete("default", &DeleteParams::default())
        .await
        .expect_err("protected");
    assert_eq!(common::code(&e), Some(403));
    let elsewhere: Api<Pod> = Api::namespaced(fake.client(), "nope");
    let e = elsewhere
        .create(&PostParams::default(), &pod("p", json!({})))
        .await
        .expect_err("no namespace");
    assert_eq!(common::code(&e), Some(404));

    // Optimistic concurrency: the first replace wins, the second (same old resourceVersion) is a Conflict.
    let mut a = pods.get("p1").await.expect("get");
    let mut b = a.clone();
    a.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "a".to_owned())]));
    let replaced = pods.replace("p1", &PostParams::default(), &a).await.expect("replace");
    assert!(replaced.metadata.resource_version > a.metadata.resource_version);
    b.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "b".to_owned())]));
    let stale = pods.replace("p1", &PostParams::default(), &b).await.expect_err("stale");
    assert_eq!(
        (common::code(&stale), common::reason(&stale).as_str()),
        (Some(409), "Conflict")
    );
    // Without a resourceVersion the replace is unconditional.
    b.metadata.resource_version = None;
    pods.replace("p1", &PostParams::default(), &b)
        .await
        .expect("unconditional replace");
    // A replace that changes nothing writes nothing.
    let before = fake.resource_version();
    let same = pods.get("p1").await.expect("get");
    pods.replace("p1", &PostParams::default(), &same)
        .await
        .expect("no-op replace");
    assert_eq!(fake.resource_version(), before);

    let deleted = pods.delete("p1", &DeleteParams::default()).await.expect("deleted");
    assert!(deleted.is_left(), "pods answer DELETE with the object");
    assert_eq!(common::code(&pods.get("p1").await.expect_err("gone")), Some(404));
    assert_eq!(
        common::code(&pods.delete("p1", &DeleteParams::default()).await.expect_err("gone")),
        Some(404)
    );
    // ConfigMaps answer DELETE with a Success Status, as the real server does.
    let cms: Api<ConfigMap> = Api::default_namespaced(fake.client());
    cms.create(&PostParams::default(), &config_map("c", json!({})))
        .await
        .expect("created");
    assert!(
        cms.delete("c", &DeleteParams::default())
            .await
            .expect("deleted")
            .is_right()
    );
}

#[tokio::test]
async fn delete_preconditions_and_finalizers() {
    let fake = server();
    let cms: Api<ConfigMap> = Api::default_namespaced(fake.client());
    let mut cm = config_map("f", json!({}));
    cm.metadata.finalizers = Some(vec!["example.com/hold".to_owned()]);
    let created = cms.create(&PostParams::default(), &cm).await.expect("created");
    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-it".to_owned()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        common::code(&cms.delete("f", &wrong).await.expect_err("precondition")),
        Some(409)
    );
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    cms.delete("f", &right).await.expect("deletion starts");
    let held = cms.get("f").await.expect("held by its finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("finalizer removed");
    assert_eq!(common::code(&cms.get("f").await.expect_err("gone")), Some(404));
}

#[tokio::test]
async fn custom_resources_with_status_subresource_and_patches() {
    let fake = server();
    let client = fake.client();
    install_crds(&client).await;
    let vsvc = l7mp("VirtualService");
    let api: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &vsvc);
    for o in common::mesh_example() {
        let kind = o["kind"].as_str().expect("kind").to_owned();
        let api: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &l7mp(&kind));
        let obj: DynamicObject = serde_json::from_value(o).expect("object");
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
    let targets: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &l7mp("Target"));
    assert_eq!(targets.list(&ListParams::default()).await.expect("list").items.len(), 2);

    // Writes to the object ignore .status; /status writes only .status and leave generation alone.
    let mut v = api.get("udp-gateway").await.expect("get");
    assert_eq!(v.metadata.generation, Some(1));
    v.data["status"] = json!({"state": "Accepted"});
    let v = api
        .replace("udp-gateway", &PostParams::default(), &v)
        .await
        .expect("replace");
    assert!(
        v.data.get("status").is_none(),
        "status ignored on the main resource: {:?}",
        v.data
    );
    assert_eq!(v.metadata.generation, Some(1), "nothing but status changed");
    let st = api
        .patch_status(
            "udp-gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "Accepted"}, "spec": {"selector": null}})),
        )
        .await
        .expect("status patch");
    assert_eq!(st.data["status"]["state"], "Accepted");
    assert!(
        !st.data["spec"]["selector"].is_null(),
        "a status patch leaves the spec alone"
    );
    assert_eq!(st.metadata.generation, Some(1));
    // A spec change bumps generation and keeps the status.
    let m = api
        .patch(
            "udp-gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"listener": {"spec": {"port": 9011}}}})),
        )
        .await
        .expect("merge");
    assert_eq!(
        (m.metadata.generation, &m.data["status"]["state"]),
        (Some(2), &json!("Accepted"))
    );
    assert_eq!(m.data["spec"]["listener"]["spec"]["port"], 9011);
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/listener/spec/port", "value": 9011},
        {"op": "replace", "path": "/spec/listener/spec/port", "value": 9012},
    ]))
    .expect("json patch");
    let j = api
        .patch("udp-gateway", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .expect("json patch");
    assert_eq!(
        (
            j.data["spec"]["listener"]["spec"]["port"].clone(),
            j.metadata.generation
        ),
        (json!(9012), Some(3))
    );
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/listener/spec/port", "value": 1}]))
            .expect("json patch");
    assert_eq!(
        common::code(
            &api.patch("udp-gateway", &PatchParams::default(), &Patch::Json::<()>(failing))
                .await
                .expect_err("test op")
        ),
        Some(422)
    );
    // Custom resources do not take strategic merge patches: 415, as from the real server.
    let smp = api
        .patch(
            "udp-gateway",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {}})),
        )
        .await
        .expect_err("strategic");
    assert_eq!(
        (common::code(&smp), common::reason(&smp).as_str()),
        (Some(415), "UnsupportedMediaType")
    );
    // A stale resourceVersion inside a merge patch is a Conflict.
    let stale = api
        .patch(
            "udp-gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "spec": {}})),
        )
        .await
        .expect_err("stale");
    assert_eq!(common::code(&stale), Some(409));

    // Server-side apply creates, merges, and drops what the manager stopped applying.
    let applied = json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "ssa", "labels": {"a": "1"}},
        "spec": {"listener": {"spec": {"UDP": {"port": 9100}}, "rules": []}}});
    let pp = PatchParams::apply("test-manager");
    let created = api
        .patch("ssa", &pp, &Patch::Apply(&applied))
        .await
        .expect("apply creates");
    assert_eq!(created.labels().get("a").map(String::as_str), Some("1"));
    api.patch(
        "ssa",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"other": "x"}}})),
    )
    .await
    .expect("another writer");
    let mut second = applied.clone();
    second["metadata"]["labels"] = json!({"b": "2"});
    let merged = api
        .patch("ssa", &pp, &Patch::Apply(&second))
        .await
        .expect("apply again");
    let labels = merged.labels();
    assert_eq!(
        (
            labels.get("a"),
            labels.get("b").map(String::as_str),
            labels.get("other").map(String::as_str)
        ),
        (None, Some("2"), Some("x"))
    );
    let no_manager = api
        .patch("ssa", &PatchParams::default(), &Patch::Apply(&second))
        .await
        .expect_err("apply needs a fieldManager");
    assert_eq!(common::code(&no_manager), Some(422));
    let log = fake.requests();
    assert!(log.iter().any(|r| r.method == "PATCH"
        && r.content_type.as_deref() == Some("application/apply-patch+yaml")
        && r.param("fieldManager").as_deref() == Some("test-manager")));

    // Deleting the CRD deletes its objects and the type.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("virtualservices.l7mp.io", &DeleteParams::default())
        .await
        .expect("CRD deleted");
    assert!(
        fake.list(&Gvr::new("l7mp.io", "v1", "virtualservices"), None)
            .is_empty()
    );
    assert_eq!(common::code(&api.get("ssa").await.expect_err("type gone")), Some(404));
}

#[tokio::test]
async fn custom_resources_follow_their_schema() {
    let fake = server();
    let client = fake.client();
    install_crds(&client).await;
    let api: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &l7mp("Target"));
    let target = |extra: Value| -> DynamicObject {
        let mut o = json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "t"},
            "spec": {"cluster": {"spec": {"UDP": {"port": 9000}}}}});
        json_patch::merge(&mut o, &extra);
        serde_json::from_value(o).expect("a target")
    };
    // Unknown fields are pruned (the default, fieldValidation=Warn), known ones kept.
    let created = api
        .create(
            &PostParams::default(),
            &target(json!({"spec": {"bogus": 1}, "extra": true})),
        )
        .await
        .expect("created");
    assert!(
        created.data["spec"].get("bogus").is_none() && created.data.get("extra").is_none(),
        "{:?}",
        created.data
    );
    assert_eq!(
        created.data["spec"]["cluster"]["spec"]["UDP"]["port"], 9000,
        "free-form fields are preserved"
    );
    // Strict: the same unknown field is a 400.
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..Default::default()
    };
    let e = api
        .patch("t", &strict, &Patch::Merge(json!({"spec": {"bogus": 1}})))
        .await
        .expect_err("strict");
    assert_eq!(common::code(&e), Some(400));
    assert!(e.to_string().contains("unknown field \"spec.bogus\""), "{e}");
    // A wrong type or a missing required field is a 422 naming the field.
    let e = api
        .patch_status(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "Bogus"}})),
        )
        .await
        .expect_err("enum");
    assert_eq!(common::code(&e), Some(422));
    assert!(
        e.to_string().contains("status.state: Unsupported value: \"Bogus\""),
        "{e}"
    );
    let e = api
        .patch_status(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"reason": "x"}})),
        )
        .await
        .expect_err("required");
    assert!(e.to_string().contains("status.state: Required value"), "{e}");
    let ok = api
        .patch_status(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "Accepted", "observedRevision": 3}})),
        )
        .await
        .expect("valid status");
    assert_eq!(ok.data["status"]["observedRevision"], 3);
    let e = api
        .create(
            &PostParams::default(),
            &target(json!({"metadata": {"name": "t2"}, "spec": {"cluster": "not an object"}})),
        )
        .await
        .expect_err("type");
    assert!(
        e.to_string().contains("spec.cluster in body must be of type object"),
        "{e}"
    );
}

#[tokio::test]
async fn selectors_and_paging() {
    let fake = server();
    let cms: Api<ConfigMap> = Api::default_namespaced(fake.client());
    for (i, tier) in ["web", "web", "db", "db", "cache", "web", "db"].iter().enumerate() {
        let labels = if i == 6 {
            json!({"tier": tier})
        } else {
            json!({"tier": tier, "env": if i % 2 == 0 { "prod" } else { "dev" }})
        };
        cms.create(&PostParams::default(), &config_map(&format!("cm{i}"), labels))
            .await
            .expect("created");
    }
    let names =
        |l: kube::api::ObjectList<ConfigMap>| l.items.into_iter().filter_map(|c| c.metadata.name).collect::<Vec<_>>();
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(cms.list(&sel("tier=web")).await.expect("=")),
        ["cm0", "cm1", "cm5"]
    );
    assert_eq!(names(cms.list(&sel("tier==db,env=prod")).await.expect("==")), ["cm2"]);
    assert_eq!(
        names(cms.list(&sel("tier!=web")).await.expect("!=")),
        ["cm2", "cm3", "cm4", "cm6"]
    );
    assert_eq!(
        names(cms.list(&sel("tier in (cache,db),env")).await.expect("in")),
        ["cm2", "cm3", "cm4"]
    );
    assert_eq!(
        names(cms.list(&sel("tier notin (web,db)")).await.expect("notin")),
        ["cm4"]
    );
    assert_eq!(names(cms.list(&sel("!env")).await.expect("!")), ["cm6"]);
    let bad = cms.list(&sel("tier in web")).await.expect_err("bad selector");
    assert_eq!(
        (common::code(&bad), common::reason(&bad).as_str()),
        (Some(400), "BadRequest")
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=cm3"))
                .await
                .expect("field")
        ),
        ["cm3"]
    );
    let all: Api<ConfigMap> = Api::all(fake.client());
    assert_eq!(
        all.list(&ListParams::default().fields("metadata.namespace=kube-system"))
            .await
            .expect("field")
            .items
            .len(),
        0
    );
    assert_eq!(
        common::code(
            &all.list(&ListParams::default().fields("data.k=v"))
                .await
                .expect_err("unknown field")
        ),
        Some(400)
    );

    // Pages of 3 are served at the first page's resourceVersion, even when objects change in between.
    let first = cms.list(&ListParams::default().limit(3)).await.expect("page 1");
    let rv = first.metadata.resource_version.clone();
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let token = first.metadata.continue_.clone().expect("more pages");
    cms.delete("cm4", &DeleteParams::default())
        .await
        .expect("deleted meanwhile");
    let second = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(second.metadata.resource_version, rv);
    let token = second.metadata.continue_.clone().expect("a third page");
    let third = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 3");
    assert!(third.metadata.continue_.is_none());
    let mut paged = names(first);
    paged.extend(names(second));
    paged.extend(names(third));
    assert_eq!(paged, ["cm0", "cm1", "cm2", "cm3", "cm4", "cm5", "cm6"]);
    // After compaction, the old snapshot is gone: 410 for the token and for an exact LIST.
    fake.compact();
    let gone = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect_err("expired");
    assert_eq!(
        (common::code(&gone), common::reason(&gone).as_str()),
        (Some(410), "Expired")
    );
    let exact = ListParams::default()
        .at(rv.as_deref().unwrap_or("1"))
        .matching(kube::api::VersionMatch::Exact);
    assert_eq!(common::code(&cms.list(&exact).await.expect_err("expired")), Some(410));
}

#[tokio::test]
async fn raw_watch_events_bookmarks_and_selector_changes() {
    let fake = server();
    let cms: Api<ConfigMap> = Api::default_namespaced(fake.client());
    cms.create(&PostParams::default(), &config_map("before", json!({"app": "x"})))
        .await
        .expect("created");
    let start = fake.resource_version().to_string();
    let mut wp = WatchParams::default().labels("app=x").timeout(10);
    wp.bookmarks = true;
    let mut stream = cms.watch(&wp, &start).await.expect("watch").boxed();
    cms.create(&PostParams::default(), &config_map("w", json!({"app": "x"})))
        .await
        .expect("created");
    cms.create(&PostParams::default(), &config_map("other", json!({"app": "y"})))
        .await
        .expect("created");
    cms.patch("w", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}})))
        .await
        .expect("modified");
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "z"}}})),
    )
    .await
    .expect("relabelled");
    cms.patch(
        "other",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "x"}}})),
    )
    .await
    .expect("relabelled");
    cms.delete("other", &DeleteParams::default()).await.expect("deleted");
    let mut seen = Vec::new();
    let mut bookmark_rv = None;
    while bookmark_rv.is_none() {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        match e {
            WatchEvent::Added(c) => seen.push(format!("ADDED {}", c.metadata.name.unwrap_or_default())),
            WatchEvent::Modified(c) => seen.push(format!("MODIFIED {}", c.metadata.name.unwrap_or_default())),
            WatchEvent::Deleted(c) => seen.push(format!("DELETED {}", c.metadata.name.unwrap_or_default())),
            WatchEvent::Bookmark(b) => bookmark_rv = Some(b.metadata.resource_version),
            WatchEvent::Error(s) => panic!("{s:?}"),
        }
    }
    assert_eq!(
        seen,
        ["ADDED w", "MODIFIED w", "DELETED w", "ADDED other", "DELETED other"]
    );
    assert_eq!(
        bookmark_rv,
        Some(fake.resource_version().to_string()),
        "the bookmark is at the latest write"
    );

    // From a compacted resourceVersion: one ERROR event with a 410 Expired Status.
    fake.compact();
    let mut old = cms.watch(&WatchParams::default(), &start).await.expect("watch").boxed();
    match old.try_next().await.expect("ok").expect("an event") {
        WatchEvent::Error(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(old.try_next().await.expect("ends").is_none());
    // "0": the current objects first, as ADDED.
    let mut now = cms
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .expect("watch")
        .boxed();
    let mut initial = Vec::new();
    while let Some(WatchEvent::Added(c)) = now.try_next().await.expect("ok") {
        initial.push(c.metadata.name.unwrap_or_default());
    }
    assert_eq!(initial, ["before", "w"]);
}

/// The watcher's view of the world, built from its events (what a reflector store would hold).
#[derive(Default)]
struct View {
    objects: BTreeMap<String, String>,
    building: Option<BTreeMap<String, String>>,
    inits: usize,
}

impl View {
    fn apply(&mut self, e: watcher::Event<ConfigMap>) {
        let entry = |c: &ConfigMap| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                c.data.as_ref().and_then(|d| d.get("k").cloned()).unwrap_or_default(),
            )
        };
        match e {
            watcher::Event::Init => self.building = Some(BTreeMap::new()),
            watcher::Event::InitApply(c) => {
                let (k, v) = entry(&c);
                self.building.get_or_insert_default().insert(k, v);
            }
            watcher::Event::InitDone => {
                self.objects = self.building.take().unwrap_or_default();
                self.inits += 1;
            }
            watcher::Event::Apply(c) => {
                let (k, v) = entry(&c);
                self.objects.insert(k, v);
            }
            watcher::Event::Delete(c) => {
                self.objects.remove(&c.metadata.name.unwrap_or_default());
            }
        }
    }
}

async fn settle(
    stream: &mut (impl futures_util::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin),
    view: &mut View,
    want: &BTreeMap<String, String>,
    min_inits: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while view.objects != *want || view.inits < min_inits {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(e))) => view.apply(e),
            Ok(Some(Err(_))) => {} // the broken stream and the 410 surface as errors; the watcher goes on
            Ok(None) => panic!("the watcher ended"),
            Err(_) => panic!(
                "timed out: view {:?} (inits {}), want {want:?} (inits >= {min_inits})",
                view.objects, view.inits
            ),
        }
    }
}

fn server_view(fake: &FakeApiServer) -> BTreeMap<String, String> {
    fake.list(&Gvr::core("configmaps"), Some("default"))
        .into_iter()
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                o["data"]["k"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn watcher_relists_after_410_and_loses_nothing() {
    let fake = server();
    let cms: Api<ConfigMap> = Api::default_namespaced(fake.client());
    cms.create(&PostParams::default(), &config_map("a", json!({})))
        .await
        .expect("created");
    let mut stream = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut view = View::default();
    settle(&mut stream, &mut view, &server_view(&fake), 1).await;

    cms.create(&PostParams::default(), &config_map("b", json!({})))
        .await
        .expect("created");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "a2"}})),
    )
    .await
    .expect("modified");
    settle(&mut stream, &mut view, &server_view(&fake), 1).await;
    cms.delete("b", &DeleteParams::default()).await.expect("deleted");
    settle(&mut stream, &mut view, &server_view(&fake), 1).await;
    assert_eq!(view.objects.len(), 1);
    // Bookmarks were asked for and sent while the watch was open.
    let watches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.param("watch").as_deref() == Some("true"))
        .collect();
    assert!(
        !watches.is_empty()
            && watches
                .iter()
                .all(|r| r.param("allowWatchBookmarks").as_deref() == Some("true"))
    );

    // Changes the watcher cannot see as events: break every watch (the watcher, not being polled, does not
    // re-watch yet), write, and compact the history. Its re-watch from its last resourceVersion then gets 410,
    // so the watcher relists (Init .. InitDone again) and ends up with every change.
    fake.break_watches();
    assert_eq!(fake.open_watches(), 0);
    cms.create(&PostParams::default(), &config_map("c", json!({})))
        .await
        .expect("created");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "a3"}})),
    )
    .await
    .expect("modified");
    fake.compact();
    fake.clear_requests();
    settle(&mut stream, &mut view, &server_view(&fake), 2).await;
    assert_eq!(
        view.objects,
        BTreeMap::from([("a".to_owned(), "a3".to_owned()), ("c".to_owned(), "v".to_owned())])
    );
    let log = fake.requests();
    let rewatch = log
        .iter()
        .position(|r| r.param("watch").is_some() && r.param("resourceVersion").is_some_and(|rv| rv != "0"));
    let relist = log.iter().position(|r| r.method == "GET" && r.param("watch").is_none());
    assert!(
        matches!((rewatch, relist), (Some(w), Some(l)) if w < l),
        "re-watch, then relist: {log:?}"
    );
    // And the watch goes on after the relist.
    cms.create(&PostParams::default(), &config_map("d", json!({})))
        .await
        .expect("created");
    settle(&mut stream, &mut view, &server_view(&fake), 2).await;
}

#[tokio::test]
async fn discovery_lists_builtins_and_crds() {
    let fake = server();
    let client = fake.client();
    install_crds(&client).await;
    let discovery = kube::Discovery::new(client.clone()).run().await.expect("discovery");
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            found.push(format!("{}/{} {:?}", ar.group, ar.plural, caps.scope));
        }
    }
    for want in [
        "/pods Namespaced",
        "/namespaces Cluster",
        "coordination.k8s.io/leases Namespaced",
        "discovery.k8s.io/endpointslices Namespaced",
        "l7mp.io/virtualservices Namespaced",
        "apiextensions.k8s.io/customresourcedefinitions Cluster",
    ] {
        assert!(found.iter().any(|f| f == want), "{want} not in {found:?}");
    }
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let fake = server();
    let cms: Api<ConfigMap> = Api::default_namespaced(fake.client());
    for n in ["s1", "s2"] {
        cms.create(&PostParams::default(), &config_map(n, json!({})))
            .await
            .expect("created");
    }
    let mut stream = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut view = View::default();
    settle(&mut stream, &mut view, &server_view(&fake), 1).await;
    cms.delete("s1", &DeleteParams::default()).await.expect("deleted");
    settle(&mut stream, &mut view, &server_view(&fake), 1).await;
    let first = fake
        .requests()
        .into_iter()
        .find(|r| r.param("watch").is_some())
        .expect("a watch");
    assert_eq!(
        first.param("sendInitialEvents").as_deref(),
        Some("true"),
        "no LIST: the initial state came as events"
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.param("watch").is_none() && r.path.ends_with("/configmaps"))
    );
}
