//! `l7mpctl`: the command-line client of l7mp-control's Management API (gRPC, `l7mp.management.v1`).
//!
//! It sends objects as they are written (multi-document YAML or JSON); the control plane validates them and answers
//! errors that name the field, so `l7mpctl` itself knows no schema.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use l7mp_api::wire::{from_struct, to_struct};
use l7mp_protos::management::v1 as pb;
use l7mp_protos::management::v1::management_client::ManagementClient;
use serde_json::{Value, json};
use std::io::Read;
use std::process::ExitCode;

#[path = "l7mpctl/certs.rs"]
mod certs;

const EXAMPLES: &str = "\
EXAMPLES
  l7mpctl apply -f examples/mesh/udp-to-tcp.yaml     # create or replace the objects in a file (multi-document YAML)
  cat svc.yaml | l7mpctl apply -f -
  l7mpctl get virtualservices                       # a table; -o yaml or -o json for the objects
  l7mpctl get target echo-backend -n default -o yaml
  l7mpctl delete vsvc udp-echo
  l7mpctl watch targets                             # print changes as they happen (Ctrl-C to stop)
  l7mpctl agents                                    # connected agents and gRPC clients, acked versions, last NACK
  l7mpctl status                                    # is the control plane ready? its store, revision, agents
  l7mpctl certs ca --out pki/ca                     # a development CA; `l7mpctl certs --help` for mTLS
  l7mpctl --server https://ctl:18000 --ca ca.pem --cert client.pem --key client.key agents
  l7mpctl --token-file ~/.l7mp-token apply -f svc.yaml   # a control plane with --api-tokens

Kinds: VirtualService (vsvc), Target (tr), Route, Rule; plural and lower-case forms are accepted.";

/// Talk to l7mp-control: apply, read, delete and watch VirtualServices, Targets, Routes and Rules, and list the
/// connected agents.
#[derive(Debug, Parser)]
#[command(name = "l7mpctl", version, after_long_help = EXAMPLES, after_help = "Run with --help for examples.")]
struct Args {
    /// The control plane's gRPC address.
    #[arg(long, env = "L7MP_SERVER", default_value = "http://127.0.0.1:18000", global = true)]
    server: String,
    #[command(flatten)]
    tls: certs::TlsArgs,
    #[command(flatten)]
    token: TokenArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// A bearer token for a control plane started with `--api-tokens`.
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// A file holding the bearer token (one line). Prefer it, or L7MP_TOKEN, to --token: a command line is
    /// visible to every user of the machine.
    #[arg(
        long,
        env = "L7MP_TOKEN_FILE",
        value_name = "FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,
    /// The bearer token itself.
    #[arg(
        long,
        env = "L7MP_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
}

impl TokenArgs {
    /// The `authorization` metadata to send, if a token is given (marked sensitive: never printed).
    fn header(&self) -> anyhow::Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, Some(t)) => t.trim().to_owned(),
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            bail!("the bearer token is empty (--token-file, --token or L7MP_TOKEN)");
        }
        let mut value = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("the bearer token has characters a header cannot carry"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = ManagementClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create or replace the objects of a file (`-` for standard input), all or nothing.
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
    },
    /// Show objects of a kind, or one object.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete an object.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Print the changes of a kind (every kind if none) as they happen.
    Watch { kind: Option<String> },
    /// The connected agents: node id, labels, acknowledged versions, last NACK.
    Agents {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The control plane itself: ready or not (and why), its store, the revision its snapshots come from, agents
    /// and objects. Exits with status 2 when it is not ready.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Make a development CA and certificates for mTLS (the control plane, agents, clients); no server needed.
    #[command(after_long_help = certs::CERTS_EXAMPLES, after_help = "Run with --help for examples.")]
    Certs {
        #[command(subcommand)]
        what: certs::CertsCmd,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("l7mpctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<NotReady>() => ExitCode::from(2),
        Err(e) => {
            eprintln!("l7mpctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The documents of a YAML or JSON text, each a JSON value; a list document (`[...]`) counts as its items.
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).with_context(|| format!("document {}: not valid YAML/JSON", i + 1))?;
        match v {
            Value::Null => {}
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    Ok(out)
}

fn describe(status: tonic::Status) -> anyhow::Error {
    let mut msg = format!("{}: {}", status.code().description(), status.message());
    if let Some(source) = std::error::Error::source(&status) {
        let more = error_chain(source);
        if !msg.contains(&more) {
            msg = format!("{msg}: {more}");
        }
        msg.push_str(certs::HINT.get().copied().unwrap_or(""));
    }
    anyhow::anyhow!(msg)
}

async fn client(server: &str, tls: &certs::TlsArgs, token: &TokenArgs) -> anyhow::Result<Client> {
    let bearer = Bearer(token.header()?);
    let channel = tls.endpoint(server)?.connect().await.map_err(|e| {
        anyhow::anyhow!("{}{}", error_chain(&e), tls.hint(server)).context(format!(
            "cannot reach the control plane at {server} (set --server or L7MP_SERVER)"
        ))
    })?;
    Ok(ManagementClient::with_interceptor(channel, bearer))
}

/// An error and its sources (tonic's transport errors hide the TLS reason in them).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

fn object_of(o: &pb::StoredObject) -> Value {
    let mut v = o.object.clone().map_or(Value::Null, from_struct);
    if let Value::Object(m) = &mut v {
        let meta = m.entry("metadata").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            meta.insert("revision".into(), json!(o.revision));
        }
    }
    v
}

fn print(objects: Vec<Value>, output: Output, one: bool) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            let v = if one {
                objects.into_iter().next().unwrap_or(Value::Null)
            } else {
                Value::Array(objects)
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Yaml => {
            for (i, o) in objects.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml_ng::to_string(o)?);
            }
        }
        Output::Table => {
            println!(
                "{:<16} {:<12} {:<28} {:<10} {:<9} REASON",
                "KIND", "NAMESPACE", "NAME", "STATE", "AGENTS"
            );
            for o in &objects {
                let s = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or("-").to_owned();
                let agents = format!(
                    "{}/{}",
                    o.pointer("/status/agents/acked").and_then(Value::as_u64).unwrap_or(0),
                    o.pointer("/status/agents/nacked").and_then(Value::as_u64).unwrap_or(0)
                );
                println!(
                    "{:<16} {:<12} {:<28} {:<10} {:<9} {}",
                    s("/kind"),
                    s("/metadata/namespace"),
                    s("/metadata/name"),
                    s("/status/state"),
                    agents,
                    o.pointer("/status/reason").and_then(Value::as_str).unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = certs::HINT.set(args.tls.hint(&args.server));
    match args.cmd {
        Cmd::Certs { what } => certs::run(what)?,
        Cmd::Apply { file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("cannot read standard input")?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?
            };
            let docs = documents(&text)?;
            if docs.is_empty() {
                bail!("{file}: no objects");
            }
            let mut objects = Vec::new();
            for (i, d) in docs.iter().enumerate() {
                let Some(s) = to_struct(d) else {
                    bail!(
                        "document {}: expected an object {{apiVersion, kind, metadata, spec}}",
                        i + 1
                    );
                };
                objects.push(pb::StoredObject {
                    object: Some(s),
                    revision: 0,
                });
            }
            let mut c = client(&args.server, &args.tls, &args.token).await?;
            let resp = c
                .apply(pb::ApplyRequest { objects })
                .await
                .map_err(describe)?
                .into_inner();
            for o in &resp.objects {
                let v = object_of(o);
                let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("?").to_owned();
                let state = s("/status/state");
                let reason = v.pointer("/status/reason").and_then(Value::as_str).unwrap_or("");
                println!(
                    "{}/{}/{} applied (revision {}): {state}{}",
                    s("/kind"),
                    s("/metadata/namespace"),
                    s("/metadata/name"),
                    o.revision,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                );
            }
        }
        Cmd::Get {
            kind,
            name,
            namespace,
            output,
        } => {
            let mut c = client(&args.server, &args.tls, &args.token).await?;
            match name {
                Some(name) => {
                    let ns = if namespace.is_empty() {
                        "default".to_owned()
                    } else {
                        namespace
                    };
                    let o = c
                        .get(pb::GetRequest {
                            r#ref: Some(pb::ObjectRef {
                                kind,
                                namespace: ns,
                                name,
                            }),
                        })
                        .await
                        .map_err(describe)?
                        .into_inner();
                    print(vec![object_of(&o)], output, true)?;
                }
                None => {
                    let l = c
                        .list(pb::ListRequest { kind, namespace })
                        .await
                        .map_err(describe)?
                        .into_inner();
                    print(l.objects.iter().map(object_of).collect(), output, false)?;
                }
            }
        }
        Cmd::Delete { kind, name, namespace } => {
            let mut c = client(&args.server, &args.tls, &args.token).await?;
            let r = c
                .delete(pb::DeleteRequest {
                    r#ref: Some(pb::ObjectRef {
                        kind: kind.clone(),
                        namespace: namespace.clone(),
                        name: name.clone(),
                    }),
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!("{kind}/{namespace}/{name} deleted (revision {})", r.revision);
        }
        Cmd::Watch { kind } => {
            let mut c = client(&args.server, &args.tls, &args.token).await?;
            let mut events = c
                .watch(pb::WatchRequest {
                    kind: kind.unwrap_or_default(),
                    from_revision: 0,
                })
                .await
                .map_err(describe)?
                .into_inner();
            while let Some(e) = events.message().await.map_err(describe)? {
                let what = match pb::watch_event::Type::try_from(e.r#type) {
                    Ok(pb::watch_event::Type::Delete) => "DELETE",
                    _ => "PUT",
                };
                let r = e.r#ref.unwrap_or_default();
                let state = e
                    .object
                    .as_ref()
                    .map(object_of)
                    .and_then(|o| o.pointer("/status/state").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                println!("{what:<7} {}/{}/{} {state}", r.kind, r.namespace, r.name);
            }
        }
        Cmd::Agents { output } => {
            let mut c = client(&args.server, &args.tls, &args.token).await?;
            let a = c.agents(pb::AgentsRequest {}).await.map_err(describe)?.into_inner();
            match output {
                Output::Table => {
                    println!(
                        "{:<20} {:<6} {:<28} {:<16} {:<10} {:<16} LAST NACK",
                        "NODE", "KIND", "LABELS", "ADDRESS", "ACKED", "REPLICA"
                    );
                    for ag in &a.agents {
                        let mut labels: Vec<String> = ag.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        println!(
                            "{:<20} {:<6} {:<28} {:<16} {:<10} {:<16} {}",
                            ag.node_id,
                            if ag.kind.is_empty() { "agent" } else { &ag.kind },
                            if labels.is_empty() {
                                "-".to_owned()
                            } else {
                                labels.join(",")
                            },
                            if ag.address.is_empty() { "-" } else { &ag.address },
                            if ag.acked_versions.is_empty() && ag.last_nack.is_empty() && !ag.replica.is_empty() {
                                // Served by another replica: its ACK details are there.
                                "-".to_owned()
                            } else {
                                format!("{} types", ag.acked_versions.len())
                            },
                            ag.replica,
                            if ag.last_nack.is_empty() {
                                "-".to_owned()
                            } else {
                                format!("{} ({})", ag.last_nack, ag.last_nack_at)
                            }
                        );
                    }
                }
                other => {
                    let v: Vec<Value> = a
                        .agents
                        .iter()
                        .map(|ag| {
                            json!({"node_id": ag.node_id, "labels": ag.labels, "address": ag.address,
                                   "acked_versions": ag.acked_versions, "last_nack": ag.last_nack,
                                   "last_nack_at": ag.last_nack_at, "connected_since": ag.connected_since,
                                   "replica": ag.replica, "kind": ag.kind})
                        })
                        .collect();
                    print(v, other, false)?;
                }
            }
        }
        Cmd::Status { output } => {
            let mut c = client(&args.server, &args.tls, &args.token).await?;
            let s = c.status(pb::StatusRequest {}).await.map_err(describe)?.into_inner();
            match output {
                Output::Table => {
                    let state = if s.ready {
                        "ready".to_string()
                    } else {
                        format!("NOT READY: {}", s.reason)
                    };
                    println!("control plane  {} ({})", args.server, s.replica);
                    println!("state          {state}");
                    println!("store          {}", s.store);
                    if !s.store_unreachable_since.is_empty() {
                        println!("unreachable    since {}", s.store_unreachable_since);
                    }
                    if !s.leadership.is_empty() {
                        println!("status writer  {}", s.leadership);
                    }
                    println!("revision       {}", s.computed_revision);
                    println!("agents         {}", s.agents);
                    println!(
                        "objects        {} accepted, {} rejected",
                        s.objects_accepted, s.objects_rejected
                    );
                }
                other => print(
                    vec![json!({"ready": s.ready, "reason": s.reason, "store": s.store,
                                "computed_revision": s.computed_revision, "agents": s.agents,
                                "objects_accepted": s.objects_accepted, "objects_rejected": s.objects_rejected,
                                "replica": s.replica, "store_unreachable_since": s.store_unreachable_since,
                                "leadership": s.leadership})],
                    other,
                    true,
                )?,
            }
            if !s.ready {
                return Err(NotReady.into());
            }
        }
    }
    Ok(())
}

/// `l7mpctl status` found the control plane not ready (exit status 2; the reason was printed).
#[derive(Debug)]
struct NotReady;

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the control plane is not ready")
    }
}

impl std::error::Error for NotReady {}
