//! Watches: a long poll woken by a write on another member, and a `stream=true` watch
//! carrying several events on one response.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_and_stream_watches() {
    let mut cl = Cluster::new(3, &[]);
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    let (a, b) = (
        cl.nodes[0].client_url.clone(),
        cl.nodes[1].client_url.clone(),
    );

    // Long poll on one member, woken by a write through another.
    let (c2, a2) = (c.clone(), a.clone());
    let poll = tokio::spawn(async move {
        call(
            &c2,
            "GET",
            &format!("{a2}/v2/keys/svc?wait=true&recursive=true"),
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the watch returned before any change");
    let r = call(
        &c,
        "PUT",
        &format!("{b}/v2/keys/svc/web1"),
        Some("value=10.0.0.1:80"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    let got = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.body["action"], "set");
    assert_eq!(got.body["node"]["key"], "/svc/web1");
    assert_eq!(got.body["node"]["value"], "10.0.0.1:80");

    // A stream watch: three writes, three events on one response.
    let req = http::Request::get(format!(
        "{a}/v2/keys/svc?wait=true&recursive=true&stream=true"
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for (i, action) in [(2, "set"), (3, "set"), (2, "delete")] {
        let url = format!("{b}/v2/keys/svc/web{i}");
        let (m, form) = if action == "delete" {
            ("DELETE", None)
        } else {
            ("PUT", Some("value=x"))
        };
        call(&c, m, &url, form).await.unwrap();
    }
    let mut text = String::new();
    while text.matches('\n').count() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("stream stalled")
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["node"]["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("set".into(), "/svc/web2".into()),
            ("set".into(), "/svc/web3".into()),
            ("delete".into(), "/svc/web2".into())
        ]
    );
    // The stream counts as a watcher while it is open.
    let r = call(&c, "GET", &format!("{a}/v2/stats/store"), None)
        .await
        .unwrap();
    assert_eq!(r.body["watchers"], 1, "{}", r.text);
    drop(body);
}
