//! The KV clients: their operations, how a request crosses the fabric to a member and
//! back, and the history they record (the final quorum reads included).

use super::*;

#[derive(Clone)]
pub(super) enum Req {
    Get { key: String, quorum: bool },
    Write { cmd: Command },
}

pub(super) async fn perform(slot: &Slot, h: RaftHandle, req: Req) -> Outcome {
    match req {
        Req::Get { key, quorum } => {
            if quorum && h.read_barrier().await.is_err() {
                return Outcome::Unknown;
            }
            let r = h.shared.machine().store.get(&key, false);
            match r {
                Ok(ev) => Outcome::Ok(ev.node.value),
                Err(e) if e.code == 100 => Outcome::Ok(None),
                Err(_) => Outcome::Unknown,
            }
        }
        Req::Write { cmd } => {
            let cmd = match cmd {
                Command::Put {
                    key,
                    value,
                    dir,
                    expire_ms: Some(ttl),
                    refresh,
                    prev,
                } => {
                    // As the API does: the receiving node fixes the expiration.
                    let expire = slot.clock.now_wall_ms() + ttl;
                    Command::Put {
                        key,
                        value,
                        dir,
                        expire_ms: Some(expire),
                        refresh,
                        prev,
                    }
                }
                c => c,
            };
            match h.write(cmd).await {
                Ok(out) => match out.result {
                    Ok(_) => Outcome::Ok(None),
                    Err(e) if e.code == 100 => Outcome::NotFound,
                    Err(e) if e.code == 101 => Outcome::CompareFailed,
                    Err(_) => Outcome::Unknown,
                },
                Err(ProposeError::NoLeader | ProposeError::Busy) => Outcome::Failed,
                Err(_) => Outcome::Unknown,
            }
        }
    }
}

/// A client request across the fabric: the request and the response can each be lost.
pub(super) async fn client_call(w: &World, client: u64, node: usize, req: Req) -> Outcome {
    // A request that never reaches a node has no effect (the client, timing out, does
    // not know that; the checker may).
    let Some(there) = w.fabric.hop(client, node as u64) else {
        madsim::time::sleep(CLIENT_TIMEOUT).await;
        return Outcome::Failed;
    };
    madsim::time::sleep(there).await;
    let slot = &w.slots[node];
    let Some(h) = slot.handle() else {
        madsim::time::sleep(CLIENT_TIMEOUT).await;
        return Outcome::Failed;
    };
    let out = match madsim::time::timeout(CLIENT_TIMEOUT, perform(slot, h, req)).await {
        Ok(o) => o,
        Err(_) => return Outcome::Unknown,
    };
    match w.fabric.hop(node as u64, client) {
        Some(back) => {
            madsim::time::sleep(back).await;
            out
        }
        None => {
            madsim::time::sleep(CLIENT_TIMEOUT).await;
            Outcome::Unknown
        }
    }
}

pub(super) fn random_op(rng: &mut impl Rng, client: u64, n: u64, last_seen: Option<&String>) -> Op {
    let value = format!("c{client}.{n}");
    let guess = last_seen
        .cloned()
        .unwrap_or_else(|| format!("c{}.{}", rng.gen_range(0..3), rng.gen_range(0..5)));
    match rng.gen_range(0..100) {
        0..=14 => Op::Get { quorum: false },
        15..=34 => Op::Get { quorum: true },
        35..=59 => Op::Set { value, ttl: false },
        60..=69 => Op::Set { value, ttl: true },
        70..=84 => Op::Cas { prev: guess, value },
        85..=92 => Op::Cad { prev: guess },
        _ => Op::Delete,
    }
}

pub(super) fn request(key: &str, op: &Op) -> Req {
    let key = key.to_string();
    let put = |value: &str, expire_ms, prev| Req::Write {
        cmd: Command::Put {
            key: key.clone(),
            value: value.to_string(),
            dir: false,
            expire_ms,
            refresh: false,
            prev,
        },
    };
    let delete = |prev| Req::Write {
        cmd: Command::Delete {
            key: key.clone(),
            dir: false,
            recursive: false,
            prev,
        },
    };
    match op {
        Op::Get { quorum } => Req::Get {
            key: key.clone(),
            quorum: *quorum,
        },
        Op::Set { value, ttl } => put(value, ttl.then_some(TTL_MS), Precondition::default()),
        Op::Cas { prev, value } => put(
            value,
            None,
            Precondition {
                value: prev.clone(),
                ..Default::default()
            },
        ),
        Op::Cad { prev } => delete(Precondition {
            value: prev.clone(),
            ..Default::default()
        }),
        Op::Delete => delete(Precondition::default()),
    }
}

/// Records one operation around a client call.
pub(super) async fn observe(w: &World, client: u64, node: usize, key: &str, op: Op) -> Outcome {
    let id = w.history.lock().expect("history lock").invoke(
        client,
        node as u64,
        key,
        op.clone(),
        w.now_ns(),
    );
    w.trace(format!("invoke {client} n{node} {key} {op:?}"));
    let out = client_call(w, client, node, request(key, &op)).await;
    w.trace(format!("complete {client} {out:?}"));
    w.history
        .lock()
        .expect("history lock")
        .complete(id, out.clone(), w.now_ns());
    out
}

pub(super) async fn client(w: Arc<World>, c: usize, until: Duration) {
    let me = CLIENT_BASE + c as u64;
    let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
    for n in 0..w.s.ops_per_client as u64 {
        if elapsed() >= until {
            return;
        }
        if w.s.bench {
            // Throughput: unique keys, no think time, each client on its own member.
            let key = format!("/bench/c{c}/{n}");
            let op = Op::Set {
                value: "v".repeat(100),
                ttl: false,
            };
            observe(&w, me, c % w.s.nodes, &key, op).await;
            continue;
        }
        let (key, node, op) = {
            let mut rng = madsim::rand::thread_rng();
            let key = format!("/k{}", rng.gen_range(0..w.s.keys));
            let node = rng.gen_range(0..w.s.nodes);
            let op = random_op(&mut rng, me, n, last_seen.get(&key));
            (key, node, op)
        };
        if let Outcome::Ok(Some(v)) = observe(&w, me, node, &key, op).await {
            last_seen.insert(key, v);
        }
        let pause = madsim::rand::thread_rng().gen_range(0..30);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One linearizable read of every key after everything settled.
pub(super) async fn final_reads(w: &Arc<World>) {
    let reader = CLIENT_BASE + 998;
    for k in 0..w.s.keys {
        let key = format!("/k{k}");
        for attempt in 0..w.s.nodes * 3 {
            let node = attempt % w.s.nodes;
            if let Outcome::Ok(_) = observe(w, reader, node, &key, Op::Get { quorum: true }).await {
                break;
            }
        }
    }
}
