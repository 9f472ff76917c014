//! `flotilla kv`: etcdctl v2's commands, output formats and exit codes, against
//! flotilla (or etcd).

use crate::client::endpoints::{key_path, query_value, Endpoints};
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand, ValueEnum};
use flotilla_shims::http::ClientResponse;

const FORM: &str = "application/x-www-form-urlencoded";
use serde_json::Value;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct KvArgs {
    /// Client URLs to try, comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:2379",
        env = "FLOTILLA_ENDPOINTS"
    )]
    endpoints: String,
    #[command(flatten)]
    tls: super::tls::ClientTlsArgs,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "simple")]
    output: Output,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 5)]
    timeout_s: u64,
    #[command(subcommand)]
    cmd: KvCmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Output {
    Simple,
    Extended,
    Json,
}

#[derive(Subcommand, Debug)]
enum KvCmd {
    /// Read a key.
    Get {
        key: String,
        /// Linearizable read through Raft.
        #[arg(long)]
        quorum: bool,
    },
    /// Set a key.
    Set {
        key: String,
        value: String,
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        swap_with_value: Option<String>,
        #[arg(long)]
        swap_with_index: Option<u64>,
    },
    /// Create a key that must not exist.
    Mk {
        key: String,
        value: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Create a directory that must not exist.
    Mkdir {
        key: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Update a key that must exist.
    Update {
        key: String,
        value: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove a key (or a directory with --dir / --recursive).
    Rm {
        key: String,
        #[arg(long)]
        dir: bool,
        #[arg(short, long)]
        recursive: bool,
        #[arg(long)]
        with_value: Option<String>,
        #[arg(long)]
        with_index: Option<u64>,
    },
    /// Remove an empty directory.
    Rmdir { key: String },
    /// List a directory.
    Ls {
        #[arg(default_value = "/")]
        key: String,
        #[arg(long)]
        sort: bool,
        #[arg(short, long)]
        recursive: bool,
        /// Append / to directories.
        #[arg(short = 'p')]
        slash: bool,
        #[arg(long)]
        quorum: bool,
    },
    /// Wait for the next change of a key (or subtree with -r).
    Watch {
        key: String,
        #[arg(long)]
        forever: bool,
        #[arg(short, long)]
        recursive: bool,
        #[arg(long)]
        after_index: Option<u64>,
    },
    /// List, add or remove members.
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    List,
    /// Add a member: NAME PEER_URLS (comma-separated).
    Add {
        name: String,
        peer_urls: String,
    },
    /// Remove a member by hex id.
    Remove {
        id: String,
    },
}

/// An etcd error, printed as etcdctl prints it, exiting 4 as etcdctl does.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(pub String);

/// A usage error etcdctl prints bare, exiting 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlainError(pub String);

/// A query value, escaped (the one encoder every client shares).
fn enc(s: &str) -> String {
    query_value(s)
}

struct Client {
    endpoints: Endpoints,
    timeout: Duration,
}

impl Client {
    async fn call(&self, method: &str, path: &str, form: Option<String>) -> Result<ClientResponse> {
        let body = form.map(|f| (FORM, f));
        self.call_body(method, path, body).await
    }

    /// [`Client::call`] with a body of any type: `(content type, text)`, by the
    /// endpoints' failover rule.
    async fn call_body(
        &self,
        method: &str,
        path: &str,
        body: Option<(&'static str, String)>,
    ) -> Result<ClientResponse> {
        let body = body.map(|(ct, b)| (ct, bytes::Bytes::from(b)));
        self.endpoints
            .call(method, path, body, self.timeout)
            .await
            .map_err(|e| anyhow!("no endpoint answered: {e}"))
    }

    /// A keys-API call; etcd errors become [`ServerError`].
    async fn keys(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, String)],
        form: Option<String>,
    ) -> Result<Value> {
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect();
        let path = format!(
            "{}{}{}",
            key_path(key),
            if q.is_empty() { "" } else { "?" },
            q.join("&")
        );
        let r = self.call(method, &path, form).await?;
        let mut v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| anyhow!("unexpected reply ({}): {e}", r.status))?;
        // etcdctl's extended output shows the X-Etcd-Index header as "Index".
        let index = r
            .headers
            .get("x-etcd-index")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<u64>().ok());
        if let Some(code) = v.get("errorCode") {
            return Err(ServerError(format!(
                "Error:  {}: {} ({}) [{}]",
                code,
                v["message"].as_str().unwrap_or(""),
                v["cause"].as_str().unwrap_or(""),
                v["index"]
            ))
            .into());
        }
        // Not an etcd error, not a success either (a member not ready yet, a proxy).
        if r.status >= 400 {
            let why = v["message"].as_str().unwrap_or("");
            return Err(ServerError(format!("Error:  {} {why}", r.status)).into());
        }
        if let (Some(obj), Some(i)) = (v.as_object_mut(), index) {
            obj.insert(INDEX_FIELD.into(), Value::from(i));
        }
        Ok(v)
    }
}

/// The etcd v2 Go client's response and node, field for field: etcdctl's `-o json`
/// marshals these.
#[derive(serde::Serialize)]
struct GoResponse {
    action: String,
    node: Option<GoNode>,
    #[serde(rename = "prevNode")]
    prev_node: Option<GoNode>,
}

#[derive(serde::Serialize)]
struct GoNode {
    key: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dir: bool,
    value: String,
    nodes: Option<Vec<GoNode>>,
    #[serde(rename = "createdIndex")]
    created_index: u64,
    #[serde(rename = "modifiedIndex")]
    modified_index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<i64>,
}

fn go_node(v: &Value) -> Option<GoNode> {
    v.as_object()?;
    Some(GoNode {
        key: v["key"].as_str().unwrap_or("").to_string(),
        dir: v["dir"].as_bool().unwrap_or(false),
        value: v["value"].as_str().unwrap_or("").to_string(),
        nodes: v["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(go_node).collect()),
        created_index: v["createdIndex"].as_u64().unwrap_or(0),
        modified_index: v["modifiedIndex"].as_u64().unwrap_or(0),
        expiration: v["expiration"].as_str().map(String::from),
        ttl: v["ttl"].as_i64(),
    })
}

/// Where [`Client::keys`] keeps the response's `X-Etcd-Index` (not shown in JSON output).
const INDEX_FIELD: &str = "__etcd_index";

fn print_node(out: Output, v: &Value) {
    let n = &v["node"];
    match out {
        Output::Json => {
            let r = GoResponse {
                action: v["action"].as_str().unwrap_or("").to_string(),
                node: go_node(&v["node"]),
                prev_node: go_node(&v["prevNode"]),
            };
            println!(
                "{}",
                serde_json::to_string(&r).expect("response serializes")
            )
        }
        Output::Simple => println!("{}", n["value"].as_str().unwrap_or("")),
        Output::Extended => {
            println!("Key: {}", n["key"].as_str().unwrap_or(""));
            println!("Created-Index: {}", n["createdIndex"]);
            println!("Modified-Index: {}", n["modifiedIndex"]);
            println!("TTL: {}", n["ttl"].as_i64().unwrap_or(0));
            println!("Index: {}", v[INDEX_FIELD]);
            println!();
            println!("{}", n["value"].as_str().unwrap_or(""));
        }
    }
}

fn ttl_param(ttl: Option<u64>) -> Vec<(&'static str, String)> {
    ttl.map(|t| vec![("ttl", t.to_string())])
        .unwrap_or_default()
}

fn value_form(v: &str) -> Option<String> {
    Some(format!("value={}", enc(v)))
}

fn list(n: &Value, recursive: bool, slash: bool, out: &mut Vec<String>) {
    for c in n["nodes"].as_array().into_iter().flatten() {
        let key = c["key"].as_str().unwrap_or("").to_string();
        let dir = c["dir"].as_bool().unwrap_or(false);
        out.push(if dir && slash { format!("{key}/") } else { key });
        if dir && recursive {
            list(c, recursive, slash, out);
        }
    }
}

pub fn run(a: KvArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(exec(a))
}

async fn exec(a: KvArgs) -> Result<()> {
    let c = Client {
        endpoints: Endpoints::parse("--endpoints", &a.endpoints).map_err(anyhow::Error::msg)?,
        timeout: Duration::from_secs(a.timeout_s),
    };
    a.tls.install(c.endpoints.urls())?;
    let out = a.output;
    match a.cmd {
        KvCmd::Get { key, quorum } => get(&c, out, &key, quorum).await,
        KvCmd::Set {
            key,
            value,
            ttl,
            swap_with_value,
            swap_with_index,
        } => {
            let mut q = ttl_param(ttl);
            q.extend(swap_with_value.map(|p| ("prevValue", p)));
            q.extend(swap_with_index.map(|i| ("prevIndex", i.to_string())));
            put(&c, out, &key, q, &value).await
        }
        KvCmd::Mk { key, value, ttl } => put(&c, out, &key, exist_params(ttl, false), &value).await,
        KvCmd::Mkdir { key, ttl } => mkdir(&c, &key, ttl).await,
        KvCmd::Update { key, value, ttl } => {
            put(&c, out, &key, exist_params(ttl, true), &value).await
        }
        KvCmd::Rm {
            key,
            dir,
            recursive,
            with_value,
            with_index,
        } => {
            let q = rm_params(dir, recursive, with_value, with_index);
            rm(&c, out, &key, &q).await
        }
        KvCmd::Rmdir { key } => {
            c.keys("DELETE", &key, &[("dir", "true".into())], None)
                .await?;
            Ok(())
        }
        KvCmd::Ls {
            key,
            sort,
            recursive,
            slash,
            quorum,
        } => {
            let listing = Listing {
                sort,
                recursive,
                slash,
                quorum,
            };
            ls(&c, out, &key, listing).await
        }
        KvCmd::Watch {
            key,
            forever,
            recursive,
            after_index,
        } => watch(&c, out, &key, forever, recursive, after_index).await,
        KvCmd::Member { cmd } => member(&c, cmd).await,
    }
}

/// `mk` (`exist` false) and `update` (true): etcd's `prevExist` rule.
fn exist_params(ttl: Option<u64>, exist: bool) -> Vec<(&'static str, String)> {
    let mut q = ttl_param(ttl);
    q.push(("prevExist", exist.to_string()));
    q
}

fn rm_params(
    dir: bool,
    recursive: bool,
    with_value: Option<String>,
    with_index: Option<u64>,
) -> Vec<(&'static str, String)> {
    let mut q = vec![];
    q.extend(dir.then(|| ("dir", "true".to_string())));
    q.extend(recursive.then(|| ("recursive", "true".to_string())));
    q.extend(with_value.map(|v| ("prevValue", v)));
    q.extend(with_index.map(|i| ("prevIndex", i.to_string())));
    q
}

/// `get`: a value (a directory is an error, as etcdctl says).
async fn get(c: &Client, out: Output, key: &str, quorum: bool) -> Result<()> {
    let q: Vec<(&str, String)> = quorum
        .then(|| ("quorum", "true".into()))
        .into_iter()
        .collect();
    let v = c.keys("GET", key, &q, None).await?;
    if v["node"]["dir"].as_bool() == Some(true) {
        return Err(PlainError(format!("{key}: is a directory")).into());
    }
    print_node(out, &v);
    Ok(())
}

/// `set`, `mk`, `update`: a PUT of `value` with these parameters.
async fn put(
    c: &Client,
    out: Output,
    key: &str,
    q: Vec<(&str, String)>,
    value: &str,
) -> Result<()> {
    print_node(out, &c.keys("PUT", key, &q, value_form(value)).await?);
    Ok(())
}

async fn mkdir(c: &Client, key: &str, ttl: Option<u64>) -> Result<()> {
    let mut q = ttl_param(ttl);
    q.push(("dir", "true".into()));
    q.push(("prevExist", "false".into()));
    c.keys("PUT", key, &q, None).await?;
    Ok(())
}

/// `rm`: etcdctl's simple output shows only the value that was there.
async fn rm(c: &Client, out: Output, key: &str, q: &[(&str, String)]) -> Result<()> {
    let v = c.keys("DELETE", key, q, None).await?;
    if out != Output::Simple {
        print_node(out, &v);
    } else if let Some(p) = v["prevNode"]["value"].as_str() {
        println!("PrevNode.Value: {p}");
    }
    Ok(())
}

/// `ls`'s flags.
struct Listing {
    sort: bool,
    recursive: bool,
    slash: bool,
    quorum: bool,
}

async fn ls(c: &Client, out: Output, key: &str, l: Listing) -> Result<()> {
    let mut q = vec![
        ("recursive", l.recursive.to_string()),
        ("sorted", l.sort.to_string()),
    ];
    q.extend(l.quorum.then(|| ("quorum", "true".into())));
    let v = c.keys("GET", key, &q, None).await?;
    if out == Output::Json {
        print_node(out, &v);
        return Ok(());
    }
    let n = &v["node"];
    if n["dir"].as_bool() != Some(true) {
        println!("{}", n["key"].as_str().unwrap_or(""));
        return Ok(());
    }
    let mut keys = vec![];
    list(n, l.recursive, l.slash, &mut keys);
    for k in keys {
        println!("{k}");
    }
    Ok(())
}

/// How long one watch request may wait for a change.
const WATCH_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `watch`: the next change (every change, with `--forever`), from `after_index`.
async fn watch(
    c: &Client,
    out: Output,
    key: &str,
    forever: bool,
    recursive: bool,
    after_index: Option<u64>,
) -> Result<()> {
    let watcher = Client {
        endpoints: c.endpoints.clone(),
        timeout: WATCH_WAIT,
    };
    let mut next = after_index.map(|i| i + 1);
    loop {
        let mut q = vec![("wait", "true".to_string())];
        q.extend(recursive.then(|| ("recursive", "true".into())));
        q.extend(next.map(|i| ("waitIndex", i.to_string())));
        let v = watcher.keys("GET", key, &q, None).await?;
        if recursive && out == Output::Simple {
            let action = v["action"].as_str().unwrap_or("");
            println!("[{action}] {}", v["node"]["key"].as_str().unwrap_or(""));
        }
        print_node(out, &v);
        if !forever {
            return Ok(());
        }
        next = v["node"]["modifiedIndex"].as_u64().map(|i| i + 1);
    }
}

async fn member(c: &Client, cmd: MemberCmd) -> Result<()> {
    match cmd {
        MemberCmd::List => {
            let r = c.call("GET", "/v2/members", None).await?;
            let v: Value = serde_json::from_slice(&r.body)?;
            let leader = c
                .call("GET", "/v2/members/leader", None)
                .await
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok());
            let leader_id = leader
                .as_ref()
                .and_then(|l| l["id"].as_str())
                .unwrap_or("")
                .to_string();
            for m in v["members"].as_array().into_iter().flatten() {
                let id = m["id"].as_str().unwrap_or("");
                let join = |k: &str| {
                    m[k].as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|u| u.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{id}: name={} peerURLs={} clientURLs={} isLeader={}",
                    m["name"].as_str().unwrap_or(""),
                    join("peerURLs"),
                    join("clientURLs"),
                    id == leader_id
                );
            }
        }
        MemberCmd::Add { name, peer_urls } => {
            let urls: Vec<&str> = peer_urls.split(',').collect();
            let body = serde_json::json!({ "peerURLs": urls }).to_string();
            let r = c
                .call_body("POST", "/v2/members", Some(("application/json", body)))
                .await?;
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            if r.status != 201 {
                return Err(ServerError(format!(
                    "Error: {}",
                    v["message"].as_str().unwrap_or("member add failed")
                ))
                .into());
            }
            println!(
                "Added member named {name} with ID {} to cluster",
                v["id"].as_str().unwrap_or("")
            );
        }
        MemberCmd::Remove { id } => {
            let r = c.call("DELETE", &format!("/v2/members/{id}"), None).await?;
            if r.status != 204 {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                return Err(ServerError(format!(
                    "Error: {}",
                    v["message"].as_str().unwrap_or("member remove failed")
                ))
                .into());
            }
            println!("Removed member {id} from cluster");
        }
    }
    Ok(())
}
