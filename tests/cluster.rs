//! Three real `flotilla node` processes on 127.0.0.1: writes, `kill -9` of the leader,
//! failover, and catch-up of the restarted node through a snapshot.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writes keys `/w/{from..to}` spread over the live nodes with `conns` concurrent
/// writers; returns the acknowledged ones (key → value). Failed writes are indeterminate.
async fn write_range(
    c: &Http,
    urls: &[String],
    from: usize,
    to: usize,
    conns: usize,
) -> BTreeMap<String, String> {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let next = Arc::new(Mutex::new(from));
    let mut tasks = vec![];
    for w in 0..conns {
        let (c, urls, acked, next) = (c.clone(), urls.to_vec(), acked.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    if *n >= to {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                let key = format!("/w/{i:05}");
                let value = format!("v{i}");
                // Retry on another node until acknowledged or out of patience (~10 s).
                for attempt in 0..200 {
                    let url = &urls[(w + i + attempt) % urls.len()];
                    let r = call(
                        &c,
                        "PUT",
                        &format!("{url}/v2/keys{key}"),
                        Some(&format!("value={value}")),
                    )
                    .await;
                    if let Ok(r) = r {
                        if r.status == 200 || r.status == 201 {
                            assert_eq!(r.body["node"]["value"], value.as_str(), "{}", r.text);
                            acked.lock().unwrap().insert(key.clone(), value.clone());
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let out = acked.lock().unwrap().clone();
    out
}

/// Reads `/w` from one node (locally, without quorum) as key → value.
async fn read_all(c: &Http, url: &str) -> BTreeMap<String, String> {
    let Ok(r) = call(c, "GET", &format!("{url}/v2/keys/w?recursive=true"), None).await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    if let Some(nodes) = r.body["node"]["nodes"].as_array() {
        for n in nodes {
            out.insert(
                n["key"].as_str().unwrap().to_string(),
                n["value"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

/// Waits until `url` holds every acknowledged write.
async fn await_holds(c: &Http, url: &str, acked: &BTreeMap<String, String>, cl: &Cluster) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let got = read_all(c, url).await;
        let missing: Vec<_> = acked
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > end {
            panic!(
                "{url} lacks {} acknowledged writes, e.g. {:?}\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                cl.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_leader_kill_and_restarted_node_catches_up_by_snapshot() {
    let mut cl = Cluster::new(
        3,
        &["--snapshot-count=100", "--snapshot-catchup-entries=10"],
    );
    cl.start_all();
    let c = client();
    let leader = cl.leader(&c, Duration::from_secs(20)).await;
    let urls: Vec<String> = cl.nodes.iter().map(|n| n.client_url.clone()).collect();

    let mut acked = write_range(&c, &urls, 0, 1000, 8).await;
    assert_eq!(
        acked.len(),
        1000,
        "with all nodes up every write is acknowledged"
    );

    cl.nodes[leader].kill9();
    let live: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| urls[i].clone())
        .collect();
    let new_leader = cl.leader(&c, Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);

    let more = write_range(&c, &live, 1000, 1500, 8).await;
    assert!(
        more.len() >= 490,
        "writes continue after failover: {} of 500 acknowledged",
        more.len()
    );
    acked.extend(more);

    for url in &live {
        await_holds(&c, url, &acked, &cl).await;
    }

    cl.nodes[leader].start();
    await_holds(&c, &urls[leader], &acked, &cl).await;
    let log = cl.nodes[leader].log();
    assert!(
        log.contains("installed snapshot from leader"),
        "restarted node should catch up through a snapshot (the log was compacted past it)\n{log}"
    );
    // And the cluster still takes writes with all three members.
    let last = write_range(&c, &urls, 1500, 1600, 4).await;
    assert_eq!(last.len(), 100);
    acked.extend(last);
    for url in &urls {
        await_holds(&c, url, &acked, &cl).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_through_raft() {
    let mut cl = Cluster::new(3, &[]);
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    let urls: Vec<String> = cl.nodes.iter().map(|n| n.client_url.clone()).collect();
    let before = write_range(&c, &urls, 0, 50, 4).await;
    assert_eq!(before.len(), 50);

    // Add a fourth member, then start it against the existing cluster.
    let (cp, pp) = (free_port(), free_port());
    let peer = format!("http://127.0.0.1:{pp}");
    let body = format!(r#"{{"peerURLs":["{peer}"]}}"#);
    let r = call_json(&c, "POST", &format!("{}/v2/members", urls[0]), &body)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cl.logs()));
    assert_eq!(r.status, 201, "{}", r.text);
    let new_id = r.body["id"].as_str().unwrap().to_string();
    let dup = call_json(&c, "POST", &format!("{}/v2/members", urls[1]), &body)
        .await
        .unwrap();
    assert_eq!(
        dup.status, 409,
        "a duplicate peer URL is refused: {}",
        dup.text
    );

    let cluster = format!("{},n3={peer}", cl.nodes[0].cluster);
    let mut n3 = NodeProc {
        name: "n3".into(),
        client_url: format!("http://127.0.0.1:{cp}"),
        peer_url: peer.clone(),
        data_dir: cl.dir.path().join("n3"),
        log_path: cl.dir.path().join("n3.log"),
        extra: vec!["--initial-cluster-state=existing".into()],
        cluster,
        child: None,
    };
    n3.start();
    let mut all = before.clone();
    all.extend(write_range(&c, &urls, 50, 100, 4).await);
    await_holds(&c, &n3.client_url, &all, &cl).await;
    let list = call(&c, "GET", &format!("{}/v2/members", n3.client_url), None)
        .await
        .unwrap();
    assert_eq!(
        list.body["members"].as_array().unwrap().len(),
        4,
        "{}",
        list.text
    );

    // Remove it again; the three remaining members keep serving writes.
    let r = call(
        &c,
        "DELETE",
        &format!("{}/v2/members/{new_id}", urls[1]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    // The node that proposed the removal has applied it before answering.
    let list = call(&c, "GET", &format!("{}/v2/members", urls[1]), None)
        .await
        .unwrap();
    assert_eq!(
        list.body["members"].as_array().unwrap().len(),
        3,
        "{}",
        list.text
    );
    let gone = call(
        &c,
        "DELETE",
        &format!("{}/v2/members/{new_id}", urls[1]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(gone.status, 404);
    let after = write_range(&c, &urls, 100, 150, 4).await;
    assert_eq!(after.len(), 50);
}
