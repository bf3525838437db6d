//! A rough throughput measurement of the embedded store (puts and gets per second, printed):
//! `cargo run --release -p l7mp-control --example store_bench`.

use std::sync::Arc;
use std::time::Instant;

use l7mp_control::store::{EmbeddedStore, Key, Precondition, Store};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let value = json!({"spec": {"listener": "l", "rules": [1, 2, 3], "weight": 0.5}});
    for tasks in [1usize, 4] {
        let n = 2000 / tasks;
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            let value = value.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..n {
                    let key = Key::new("Route", format!("t{t}"), format!("r{}", i % 100));
                    store.put(&key, value.clone(), Precondition::None).await.expect("put");
                }
            }));
        }
        for handle in handles {
            handle.await.expect("task");
        }
        let elapsed = start.elapsed();
        println!(
            "{tasks} writer(s): {} puts in {elapsed:?}: {:.0} puts/s",
            n * tasks,
            (n * tasks) as f64 / elapsed.as_secs_f64()
        );
    }
    let start = Instant::now();
    for i in 0..2000 {
        store
            .get(&Key::new("Route", "t0", format!("r{}", i % 100)))
            .await
            .expect("get");
    }
    println!("2000 gets: {:.0} gets/s", 2000.0 / start.elapsed().as_secs_f64());
}
