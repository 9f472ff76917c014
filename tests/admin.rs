//! Admin endpoints and bad input against a real three-member cluster: stats, metrics,
//! member peer-URL updates, unclean paths, oversized values.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_metrics_members_and_bad_input() {
    let mut cl = Cluster::new(3, &["--max-request-bytes=1024"]);
    cl.start_all();
    let c = client();
    let leader = cl.leader(&c, Duration::from_secs(20)).await;
    let l = cl.nodes[leader].client_url.clone();
    let f = cl.nodes[(leader + 1) % 3].client_url.clone();
    for i in 0..20 {
        let r = call(&c, "PUT", &format!("{f}/v2/keys/k{i}"), Some("value=v"))
            .await
            .unwrap();
        assert_eq!(
            r.status, 201,
            "writes through a follower are forwarded: {}",
            r.text
        );
    }
    call(
        &c,
        "PUT",
        &format!("{l}/v2/keys/k0?prevValue=nope"),
        Some("value=x"),
    )
    .await
    .unwrap();
    call(&c, "GET", &format!("{l}/v2/keys/k1"), None)
        .await
        .unwrap();
    call(&c, "GET", &format!("{l}/v2/keys/none"), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // /v2/stats/leader: the leader's view of both followers; 403 elsewhere.
    let r = call(&c, "GET", &format!("{l}/v2/stats/leader"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let followers = r.body["followers"].as_object().unwrap();
    assert_eq!(followers.len(), 2, "{}", r.text);
    for (_, fs) in followers {
        assert!(fs["counts"]["success"].as_u64().unwrap() > 0, "{}", r.text);
        assert!(
            fs["latency"]["current"].as_f64().unwrap() > 0.0,
            "{}",
            r.text
        );
    }
    let r = call(&c, "GET", &format!("{f}/v2/stats/leader"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text);

    let r = call(&c, "GET", &format!("{l}/v2/stats/self"), None)
        .await
        .unwrap();
    assert_eq!(r.body["state"], "StateLeader");
    assert!(
        r.body["sendAppendRequestCnt"].as_u64().unwrap() > 0,
        "{}",
        r.text
    );
    let r = call(&c, "GET", &format!("{f}/v2/stats/self"), None)
        .await
        .unwrap();
    assert_eq!(r.body["state"], "StateFollower");
    assert!(
        r.body["recvAppendRequestCnt"].as_u64().unwrap() > 0,
        "{}",
        r.text
    );

    // /v2/stats/store counts every member's applied writes; gets where they were served.
    let r = call(&c, "GET", &format!("{l}/v2/stats/store"), None)
        .await
        .unwrap();
    assert_eq!(r.body["setsSuccess"], 20, "{}", r.text);
    assert_eq!(r.body["compareAndSwapFail"], 1, "{}", r.text);
    assert_eq!(r.body["getsSuccess"], 1, "{}", r.text);
    assert_eq!(r.body["getsFail"], 1, "{}", r.text);

    // /metrics in Prometheus text format.
    let r = call(&c, "GET", &format!("{f}/metrics"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text
            .contains(r#"flotilla_http_requests_total{method="PUT",code="201"} 20"#),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("flotilla_http_request_duration_seconds_bucket"),
        "{}",
        r.text
    );
    let metric = |name: &str| -> f64 {
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{}", r.text))
    };
    // The follower proposed the 20 writes (its own publish may still be in backoff).
    assert!(
        metric("flotilla_raft_proposals_total ") >= 20.0,
        "{}",
        r.text
    );
    let syncs: u64 = r
        .text
        .lines()
        .find_map(|l| l.strip_prefix("flotilla_disk_sync_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(syncs > 0, "{}", r.text);

    // PUT /v2/members/ID replaces peer URLs through Raft.
    let members = call(&c, "GET", &format!("{l}/v2/members"), None)
        .await
        .unwrap();
    let m = members.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == cl.nodes[leader].name)
        .unwrap()
        .clone();
    let id = m["id"].as_str().unwrap();
    let url = format!("{l}/v2/members/{id}");
    let peers = format!(
        r#"{{"peerURLs":["{}","http://127.0.0.1:1"]}}"#,
        cl.nodes[leader].peer_url
    );
    let r = call_json(&c, "PUT", &url, &peers).await.unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let members = call(&c, "GET", &format!("{l}/v2/members"), None)
        .await
        .unwrap();
    assert!(
        members.text.contains("http://127.0.0.1:1"),
        "{}",
        members.text
    );
    let r = call_json(&c, "PUT", &format!("{l}/v2/members/ffff"), &peers)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = call_json(&c, "PUT", &url, "{not json").await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text.contains("bad member JSON"), "{}", r.text);

    // Bad input: nothing applied, a clear answer.
    let big = format!("value={}", "x".repeat(1500));
    let r = call(&c, "PUT", &format!("{l}/v2/keys/big"), Some(&big))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("limit is 1024"), "{}", r.text);
    let huge = format!("value={}", "x".repeat(100_000));
    let r = call(&c, "PUT", &format!("{l}/v2/keys/big"), Some(&huge))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text);
    // The server closes a connection whose oversized body it did not read.
    let c = client();
    let r = call(&c, "GET", &format!("{l}/v2/keys/big"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404, "nothing was applied");
    let r = call(&c, "PUT", &format!("{l}/v2/keys/a/../k1"), Some("value=x"))
        .await
        .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "/v2/keys/k1");
    let r = call(
        &c,
        "PUT",
        &format!("{l}/v2/keys/a//b?ttl=5"),
        Some("value=x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "/v2/keys/a/b?ttl=5");
    let r = call(&c, "GET", &format!("{l}/v2/keys/k1"), None)
        .await
        .unwrap();
    assert_eq!(r.body["node"]["value"], "v", "redirects apply nothing");
}

/// Quorum reads are ReadIndex barriers, not log entries (etcd v2 puts each one through
/// the log): `X-Raft-Index` moves only with writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_add_nothing_to_the_log() {
    let mut cl = Cluster::new(3, &[]);
    cl.start_all();
    let c = client();
    let leader = cl.leader(&c, Duration::from_secs(20)).await;
    let l = cl.nodes[leader].client_url.clone();
    let f = cl.nodes[(leader + 1) % 3].client_url.clone();
    // Every member has published itself (its publish is a write) before we count.
    for n in &cl.nodes {
        wait_healthy(&c, &n.client_url).await;
    }
    let r = call(&c, "PUT", &format!("{l}/v2/keys/q"), Some("value=1"))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let raft_index = |r: &Resp| -> u64 {
        let h = r.headers["x-raft-index"].to_str().unwrap();
        h.parse().unwrap()
    };
    let get = format!("{l}/v2/keys/q");
    let before = raft_index(&call(&c, "GET", &get, None).await.unwrap());
    for url in [&l, &f] {
        for _ in 0..20 {
            let r = call(&c, "GET", &format!("{url}/v2/keys/q?quorum=true"), None)
                .await
                .unwrap();
            assert_eq!(
                (r.status, r.body["node"]["value"].as_str()),
                (200, Some("1"))
            );
        }
    }
    let after = raft_index(&call(&c, "GET", &get, None).await.unwrap());
    assert_eq!(after, before, "40 quorum reads moved the log");
    call(&c, "PUT", &get, Some("value=2")).await.unwrap();
    let written = raft_index(&call(&c, "GET", &get, None).await.unwrap());
    assert!(written > after, "a write moves it: {written} after {after}");
}

/// A restarted member whose publish is already in its log, unchanged, is ready once it
/// has applied its log: it serves again, and adds no entry to do so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_is_ready_without_publishing_again() {
    let mut cl = Cluster::new(3, &[]);
    cl.start_all();
    let c = client();
    let leader = cl.leader(&c, Duration::from_secs(20)).await;
    for n in &cl.nodes {
        wait_healthy(&c, &n.client_url).await;
    }
    let l = cl.nodes[leader].client_url.clone();
    let r = call(&c, "PUT", &format!("{l}/v2/keys/r"), Some("value=1"))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let raft_index = |r: &Resp| -> u64 {
        let h = r.headers["x-raft-index"].to_str().unwrap();
        h.parse().unwrap()
    };
    let get = format!("{l}/v2/keys/r");
    let before = raft_index(&call(&c, "GET", &get, None).await.unwrap());
    let f = (leader + 1) % 3;
    cl.nodes[f].kill9();
    cl.nodes[f].start();
    let url = cl.nodes[f].client_url.clone();
    wait_healthy(&c, &url).await;
    let r = call(&c, "GET", &format!("{url}/v2/keys/r?quorum=true"), None)
        .await
        .unwrap();
    assert_eq!(r.body["node"]["value"], "1", "{}", r.text);
    // Ready comes from the old publish, so a new one could still be on its way: give it
    // longer than a publish attempt and its backoff take before counting.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = raft_index(&call(&c, "GET", &get, None).await.unwrap());
    assert_eq!(after, before, "the restarted member published itself again");
}
