//! WebSocket load generator for `e2e/bench/ws_bench.py`: opens `CONNS` WebSockets to `URL`, keeps `WINDOW`
//! messages of `SIZE` bytes in flight on each for `SECS` seconds against an echoing server, and prints the number of
//! echoed messages per second.
//!
//! Usage: ws_load URL [SECS=10] [CONNS=4] [WINDOW=64] [SIZE=64]

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .ok_or("usage: ws_load URL [SECS] [CONNS] [WINDOW] [SIZE]")?
        .clone();
    let num = |i: usize, d: f64| args.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(d);
    let (secs, conns, window, size) = (
        num(2, 10.0),
        num(3, 4.0) as usize,
        num(4, 64.0) as usize,
        num(5, 64.0) as usize,
    );
    let payload = vec![b'x'; size];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, payload) = (url.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
            let (mut tx, mut rx) = ws.split();
            for _ in 0..window {
                tx.feed(Message::binary(payload.clone())).await?;
            }
            tx.flush().await?;
            let mut echoed = 0u64;
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                    Ok(Some(Ok(Message::Binary(_)))) => {
                        echoed += 1;
                        tx.send(Message::binary(payload.clone())).await?;
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            let _ = tx.close().await;
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(echoed)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        match t.await? {
            Ok(n) => total += n,
            Err(e) => eprintln!("ws_load: connection failed: {e}"),
        }
    }
    println!("{:.0}", total as f64 / start.elapsed().as_secs_f64());
    Ok(())
}
