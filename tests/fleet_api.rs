//! fleet's API v1 on a real node: status codes, error bodies, JSON shapes, paging,
//! desired-state moves, machines and their dynamic metadata — as fleet answers them.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn send(c: &Http, method: &str, url: &str, ctype: Option<&str>, body: &str) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some(t) = ctype {
        b = b.header("content-type", t);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("answer within 10 s")
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Resp {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    }
}

fn error(r: &Resp) -> (u64, String) {
    (
        r.body["error"]["code"].as_u64().unwrap_or(0),
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
    )
}

const UNIT: &str = r#"{"desiredState":"launched","options":[
  {"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"},
  {"section":"X-Fleet","name":"Conflicts","value":"mycoolapp@*.service"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_api_v1_as_fleet_answers() {
    let mut cl = Cluster::with_machines(
        1,
        &[
            "--machine-id=abcdef0123456789",
            "--metadata=region=us",
            "--public-ip=10.1.2.3",
        ],
    );
    cl.start_all();
    let c = client();
    let base = cl.nodes[0].client_url.clone();
    wait_healthy(&c, &base).await;
    let units = format!("{base}/fleet/v1/units");
    let json_ct = Some("application/json");

    // The seed's curl: PUT of a unit.json to a template instance.
    let r = send(
        &c,
        "PUT",
        &format!("{units}/mycoolapp@12.service"),
        json_ct,
        UNIT,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.text.is_empty(), "201 has no body");
    assert!(r.headers["server"].to_str().unwrap().starts_with("fleetd/"));

    // Content-Type rules.
    let r = send(&c, "PUT", &format!("{units}/x.service"), None, UNIT).await;
    assert_eq!(
        (r.status, error(&r)),
        (415, (415, "expected 1 Content-Type, got 0".into()))
    );
    let r = send(
        &c,
        "PUT",
        &format!("{units}/x.service"),
        Some("text/plain"),
        UNIT,
    )
    .await;
    assert_eq!(
        error(&r),
        (
            415,
            "only acceptable Content-Type is application/json".into()
        )
    );
    let r = send(
        &c,
        "PUT",
        &format!("{units}/x.service"),
        Some("application/json; charset=utf-8"),
        UNIT,
    )
    .await;
    assert_eq!(r.status, 201, "parameters after ; are ignored: {}", r.text);

    // Bodies and names.
    let r = send(
        &c,
        "PUT",
        &format!("{units}/y.service"),
        json_ct,
        "{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        error(&r).1.starts_with("unable to decode body: "),
        "{}",
        r.text
    );
    let r = send(&c, "PUT", &format!("{units}/y.service"), json_ct, "").await;
    assert_eq!(error(&r), (400, "unable to decode body: EOF".into()));
    let r = send(
        &c,
        "PUT",
        &format!("{units}/y.service"),
        json_ct,
        r#"{"name":"z.service","options":[]}"#,
    )
    .await;
    assert_eq!(
        error(&r).1,
        r#"name in URL "y.service" differs from unit name in request body "z.service""#
    );
    let r = send(&c, "PUT", &format!("{units}/y.bogus"), json_ct, UNIT).await;
    assert_eq!(error(&r), (400, r#"invalid unit type: "bogus""#.into()));
    let r = send(
        &c,
        "PUT",
        &format!("{units}/y.service"),
        json_ct,
        r#"{"desiredState":"loaded"}"#,
    )
    .await;
    assert_eq!(
        error(&r),
        (409, "unit does not exist and options field empty".into())
    );
    let bad_opts = r#"{"options":[{"section":"X-Fleet","name":"MachineID","value":"a"},{"section":"X-Fleet","name":"Global","value":"true"}]}"#;
    let r = send(&c, "PUT", &format!("{units}/y.service"), json_ct, bad_opts).await;
    assert_eq!(
        error(&r),
        (400, "MachineID cannot be used with Global".into())
    );
    // Replacing an existing unit's options is validated like a new one, and a refused
    // replacement leaves the unit as it was.
    let existing = format!("{units}/mycoolapp@12.service");
    let before = send(&c, "GET", &existing, None, "").await.body["options"].clone();
    assert!(before.is_array(), "{before}");
    let r = send(&c, "PUT", &existing, json_ct, bad_opts).await;
    assert_eq!(
        error(&r),
        (400, "MachineID cannot be used with Global".into())
    );
    let after = send(&c, "GET", &existing, None, "").await.body["options"].clone();
    assert_eq!(after, before, "a refused replacement changed the unit");
    let r = send(
        &c,
        "PUT",
        &format!("{units}/y.service"),
        json_ct,
        &UNIT.replace("launched", "bogus"),
    )
    .await;
    assert_eq!(r.status, 400, "unknown desired state: {}", r.text);

    // Templates: stored, never activated.
    let tmpl = UNIT.replace("\"launched\"", "\"inactive\"");
    let r = send(
        &c,
        "PUT",
        &format!("{units}/mycoolapp@.service"),
        json_ct,
        &tmpl,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(
        &c,
        "PUT",
        &format!("{units}/mycoolapp@.service"),
        json_ct,
        r#"{"desiredState":"launched"}"#,
    )
    .await;
    assert_eq!(
        error(&r),
        (
            400,
            r#"cannot activate template "mycoolapp@.service""#.into()
        )
    );
    let r = send(&c, "PUT", &format!("{units}/other@.service"), json_ct, UNIT).await;
    assert_eq!(r.status, 400, "a template created launched: {}", r.text);

    // State changes on an existing unit.
    let r = send(
        &c,
        "PUT",
        &format!("{units}/mycoolapp@12.service"),
        json_ct,
        r#"{}"#,
    )
    .await;
    assert_eq!(
        error(&r),
        (
            409,
            "must provide DesiredState to update existing unit".into()
        )
    );
    let r = send(
        &c,
        "PUT",
        &format!("{units}/mycoolapp@12.service"),
        json_ct,
        r#"{"desiredState":"loaded"}"#,
    )
    .await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    // The same options again are a state change (204), different ones a replacement (201).
    let r = send(
        &c,
        "PUT",
        &format!("{units}/mycoolapp@12.service"),
        json_ct,
        &UNIT.replace("launched", "inactive"),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let changed = UNIT.replace("sleep 1000", "sleep 2000");
    let r = send(
        &c,
        "PUT",
        &format!("{units}/mycoolapp@12.service"),
        json_ct,
        &changed,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // GET one: fleet's fields. It is placed on the only machine, whose agent refuses the
    // host command (no --allow-host-commands) and reports it failed: currentState is
    // `loaded` (a state is published, the unit is not running).
    let end = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let r = call(&c, "GET", &format!("{units}/mycoolapp@12.service"), None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        if r.body["currentState"] == "loaded" || Instant::now() > end {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.body["machineID"], "abcdef0123456789", "{}", got.text);
    assert_eq!(got.body["desiredState"], "launched");
    assert_eq!(got.body["currentState"], "loaded", "{}", got.text);
    assert_eq!(
        got.body["options"][0],
        json!({"name":"ExecStart","section":"Service","value":"/bin/sleep 2000"})
    );
    let st = call(
        &c,
        "GET",
        &format!("{base}/fleet/v1/state?unitName=mycoolapp@12.service"),
        None,
    )
    .await
    .unwrap();
    let s0 = &st.body["states"][0];
    assert_eq!(
        (
            s0["machineID"].as_str(),
            s0["systemdLoadState"].as_str(),
            s0["systemdActiveState"].as_str(),
            s0["systemdSubState"].as_str()
        ),
        (
            Some("abcdef0123456789"),
            Some("loaded"),
            Some("failed"),
            Some("failed")
        ),
        "{}",
        st.text
    );
    assert_eq!(s0["hash"].as_str().map(str::len), Some(40));
    let r = call(&c, "GET", &format!("{units}/nope.service"), None)
        .await
        .unwrap();
    assert_eq!(error(&r), (404, "unit does not exist".into()));

    // Routing.
    for (m, path, code) in [
        ("GET", "/fleet/v1/units/", 404),
        ("GET", "/fleet/v1/bogus", 404),
        ("GET", "/fleet/v1/machines/x", 404),
        ("GET", "/fleet/v1/discovery/x", 404),
        ("GET", "/fleet/v1/state/nope.service", 404),
    ] {
        let r = call(&c, m, &format!("{base}{path}"), None).await.unwrap();
        assert_eq!(r.status, code, "{m} {path}: {}", r.text);
        assert_eq!(r.body["error"]["code"], code, "{m} {path}: {}", r.text);
    }
    // Every resource's answer to a method it does not take, with fleet's words
    // (api/*.go in coreos/fleet), under both prefixes.
    let only_get = "only GET supported against this resource";
    let resources: [(&str, &[&str], u16, &str); 6] = [
        ("", &[], 405, ""),
        (
            "/discovery",
            &["GET"],
            400,
            "only HTTP GET supported against this resource",
        ),
        ("/units", &["GET"], 405, only_get),
        (
            "/units/a.service",
            &["GET", "PUT", "DELETE"],
            405,
            "only GET, PUT and DELETE supported against this resource",
        ),
        ("/state", &["GET"], 405, only_get),
        ("/state/a.service", &["GET"], 405, only_get),
    ];
    let machines = (
        "/machines",
        &["GET", "PATCH"][..],
        405,
        "only GET and PATCH supported against this resource",
    );
    for prefix in ["/fleet/v1", "/v1-alpha"] {
        for (path, takes, code, msg) in resources.iter().copied().chain([machines]) {
            for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                if takes.contains(&m) {
                    continue;
                }
                let url = format!("{base}{prefix}{path}");
                let r = call(&c, m, &url, Some("{}")).await.unwrap();
                assert_eq!(r.status, code, "{m} {url}: {}", r.text);
                assert_eq!(error(&r), (code as u64, msg.to_string()), "{m} {url}");
            }
        }
    }
    let r = call(
        &c,
        "GET",
        &format!("{base}/v1-alpha/units/mycoolapp@12.service"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "the legacy prefix");
    let r = call(&c, "GET", &format!("{base}/fleet/v1/discovery"), None)
        .await
        .unwrap();
    assert_eq!(r.body["id"], "fleet:v1");

    // Paging: 150 more units, listed 100 a page, sorted by name.
    for i in 0..150 {
        let r = send(
            &c,
            "PUT",
            &format!("{units}/p{i:03}.service"),
            json_ct,
            &tmpl,
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let p1 = call(&c, "GET", &units, None).await.unwrap();
    assert_eq!(p1.body["units"].as_array().unwrap().len(), 100);
    assert_eq!(p1.body["nextPageToken"], "ZAACAA==");
    let p2 = call(
        &c,
        "GET",
        &format!("{units}?nextPageToken=ZAACAA%3D%3D"),
        None,
    )
    .await
    .unwrap();
    let names: Vec<String> = p2.body["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    // mycoolapp@12, mycoolapp@ (template), x and the 150.
    assert_eq!(names.len(), 153 - 100, "{names:?}");
    assert!(p2.body.get("nextPageToken").is_none());
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let r = call(&c, "GET", &format!("{units}?nextPageToken=EwBMLg=="), None)
        .await
        .unwrap();
    assert_eq!(error(&r), (400, "token limit must be 100".into()));
    let r = call(&c, "GET", &format!("{units}?nextPageToken=ZAADAA=="), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text.as_str()),
        (200, "{}"),
        "past the end: an empty page"
    );

    // Machines, and dynamic metadata over the configured.
    let r = call(&c, "GET", &format!("{base}/fleet/v1/machines"), None)
        .await
        .unwrap();
    assert_eq!(
        r.body,
        json!({"machines":[{"id":"abcdef0123456789","metadata":{"region":"us"},"primaryIP":"10.1.2.3"}]})
    );
    let patch = r#"[{"op":"add","path":"/abcdef0123456789/metadata/disk","value":{"value":"ssd"}},
                    {"op":"remove","path":"/abcdef0123456789/metadata/region"}]"#;
    let r = send(
        &c,
        "PATCH",
        &format!("{base}/fleet/v1/machines"),
        json_ct,
        patch,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = call(&c, "GET", &format!("{base}/fleet/v1/machines"), None)
        .await
        .unwrap();
    assert_eq!(r.body["machines"][0]["metadata"], json!({"disk":"ssd"}));
    for (body, msg) in [
        (
            r#"[{"op":"move","path":"/m/metadata/k","value":{"value":"v"}}]"#,
            "invalid op: expect add, remove, or replace",
        ),
        (
            r#"[{"op":"add","path":"/m/meta/k","value":{"value":"v"}}]"#,
            "machine metadata path invalid",
        ),
        (
            r#"[{"op":"add","path":"/m/metadata/k"}]"#,
            "invalid value: add and replace require a value",
        ),
    ] {
        let r = send(
            &c,
            "PATCH",
            &format!("{base}/fleet/v1/machines"),
            json_ct,
            body,
        )
        .await;
        assert_eq!(error(&r), (400, msg.to_string()), "{body}");
    }
    let r = send(
        &c,
        "PATCH",
        &format!("{base}/fleet/v1/machines"),
        json_ct,
        "nope",
    )
    .await;
    assert_eq!(r.status, 400);

    // State: filters that match nothing give `{}`.
    let r = call(
        &c,
        "GET",
        &format!("{base}/fleet/v1/state?machineID=nobody"),
        None,
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));

    // DELETE.
    let r = call(&c, "DELETE", &format!("{units}/mycoolapp@12.service"), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    let r = call(&c, "DELETE", &format!("{units}/mycoolapp@12.service"), None)
        .await
        .unwrap();
    assert_eq!(error(&r), (404, "unit does not exist".into()));
    // The engine takes its schedule away.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(
            &c,
            "GET",
            &format!("{base}/v2/keys/_flotilla/schedule/abcdef0123456789/mycoolapp@12.service"),
            None,
        )
        .await
        .unwrap();
        if r.status == 404 {
            break;
        }
        assert!(Instant::now() < end, "schedule entry outlived its unit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
