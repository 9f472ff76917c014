//! Every confd template function, in both dialects where it exists in both: a table of
//! template × data → the exact output (confd's sort orders, defaults and errors).
//! Pure: the templates render from a fixed store snapshot and a fixed host.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use flotilla::render::funcs::Ctx;
use flotilla::render::memkv::MemKv;
use flotilla::render::template::render;
use flotilla_shims::host::{FixedHost, Srv};
use std::sync::Arc;

fn ctx() -> Arc<Ctx> {
    let mut kv = MemKv::new();
    for (k, v) in [
        ("/app/name", "Sweet"),
        ("/app/empty", ""),
        ("/app/port", "8080"),
        ("/app/flag", "true"),
        ("/app/b64", "aGVsbG8="),
        (
            "/app/json",
            r#"{"Id":"host1","IP":"10.0.0.1","Port":8080,"Big":1000000}"#,
        ),
        ("/app/list", r#"["a","b",3]"#),
        ("/svc/web/b", "10.0.0.2:80"),
        ("/svc/web/a", "10.0.0.10:80"),
        ("/svc/web/c", "10.0.0.1:80"),
        ("/svc/db/main/host", "db1"),
        ("/svc/db/main/port", "5432"),
        ("/svc/db/replica/host", "db2"),
        ("/svc/cache", "redis"),
        ("/lens/aaa", "3"),
        ("/lens/b", "1"),
        ("/lens/cc", "2"),
    ] {
        kv.set(k, v);
    }
    let mut host = FixedHost::default();
    host.env.insert("HOSTNAME".into(), "node-1".into());
    host.env.insert("BLANK".into(), String::new());
    host.files.push("/etc/hosts".into());
    host.ips.insert(
        "db.local".into(),
        vec![
            "10.0.0.9".parse().unwrap(),
            "::1".parse().unwrap(),
            "10.0.0.10".parse().unwrap(),
        ],
    );
    let srv = |t: &str, port, priority, weight| Srv {
        target: t.into(),
        port,
        priority,
        weight,
    };
    host.srv.insert(
        "_etcd._tcp.example.com".into(),
        vec![
            srv("b.example.com.", 2380, 0, 0),
            srv("a.example.com.", 2380, 10, 5),
        ],
    );
    // 2026-11-30 09:05:03.25 UTC
    let now_ms = 1_796_029_503_250;
    Arc::new(Ctx {
        kv: Arc::new(kv),
        host: Arc::new(host),
        now_ms,
    })
}

/// (Go template, handlebars template or "" where the helper has no natural handlebars
/// form, expected output).
const OK: &[(&str, &str, &str)] = &[
    (
        r#"{{exists "/app/name"}} {{exists "/svc/web"}} {{exists "/nope"}}"#,
        r#"{{exists "/app/name"}} {{exists "/svc/web"}} {{exists "/nope"}}"#,
        "true false false",
    ),
    (
        r#"{{range ls "/svc"}}{{.}},{{end}}"#,
        r#"{{#each (ls "/svc")}}{{this}},{{/each}}"#,
        "cache,db,web,",
    ),
    (
        r#"{{range lsdir "/svc"}}{{.}},{{end}}"#,
        r#"{{#each (lsdir "/svc")}}{{this}},{{/each}}"#,
        "db,web,",
    ),
    (
        r#"{{with get "/app/name"}}{{.Key}}={{.Value}}{{end}}"#,
        r#"{{#with (get "/app/name")}}{{Key}}={{Value}}{{/with}}"#,
        "/app/name=Sweet",
    ),
    (
        r#"{{range gets "/svc/web/*"}}{{.Key}}={{.Value}};{{end}}"#,
        r#"{{#each (gets "/svc/web/*")}}{{Key}}={{Value}};{{/each}}"#,
        "/svc/web/a=10.0.0.10:80;/svc/web/b=10.0.0.2:80;/svc/web/c=10.0.0.1:80;",
    ),
    (
        r#"{{getv "/app/name"}}|{{getv "/app/empty" "dflt"}}|{{getv "/nope" "dflt"}}"#,
        r#"{{getv "/app/name"}}|{{getv "/app/empty" "dflt"}}|{{getv "/nope" "dflt"}}"#,
        "Sweet||dflt",
    ),
    (
        r#"{{range getvs "/svc/web/*"}}server {{.}};{{end}}"#,
        r#"{{#each (getvs "/svc/web/*")}}server {{this}};{{/each}}"#,
        "server 10.0.0.10:80;server 10.0.0.1:80;server 10.0.0.2:80;",
    ),
    (
        r#"{{range getvs "/svc/*/main/*"}}{{.}},{{end}}"#,
        r#"{{#each (getvs "/svc/*/main/*")}}{{this}},{{/each}}"#,
        "5432,db1,",
    ),
    (
        r#"{{base "/svc/web/a"}} {{dir "/svc/web/a"}}"#,
        r#"{{base "/svc/web/a"}} {{dir "/svc/web/a"}}"#,
        "a /svc/web",
    ),
    (
        r#"{{split "a:b:c" ":"}} {{index (split "a:b:c" ":") 1}}"#,
        r#"{{#each (split "a:b:c" ":")}}{{this}}.{{/each}}"#,
        "[a b c] b",
    ),
    (
        r#"{{join (split "a:b:c" ":") "-"}}"#,
        r#"{{join (split "a:b:c" ":") "-"}}"#,
        "a-b-c",
    ),
    (
        r#"{{$d := json (getv "/app/json")}}{{$d.Id}} {{$d.IP}} {{$d.Port}} {{$d.Big}}"#,
        r#"{{#with (json (getv "/app/json"))}}{{Id}} {{IP}}{{/with}}"#,
        "host1 10.0.0.1 8080 1e+06",
    ),
    (
        r#"{{range jsonArray (getv "/app/list")}}{{.}},{{end}}"#,
        r#"{{#each (jsonArray (getv "/app/list"))}}{{this}},{{/each}}"#,
        "a,b,3,",
    ),
    (
        r#"{{$m := map "a" 1 "b" "two"}}{{$m.a}} {{$m.b}}"#,
        r#"{{#with (map "a" 1 "b" "two")}}{{a}} {{b}}{{/with}}"#,
        "1 two",
    ),
    (
        r#"{{getenv "HOSTNAME"}}|{{getenv "BLANK" "d1"}}|{{getenv "UNSET" "d2"}}|{{getenv "UNSET"}}"#,
        r#"{{getenv "HOSTNAME"}}|{{getenv "BLANK" "d1"}}|{{getenv "UNSET" "d2"}}|{{getenv "UNSET"}}"#,
        "node-1|d1|d2|",
    ),
    (
        r#"{{datetime}}"#,
        r#"{{datetime}}"#,
        "2026-11-30 09:05:03.25 +0000 UTC",
    ),
    (
        r#"{{toUpper "abc"}}{{toLower "DEF"}}"#,
        r#"{{toUpper "abc"}}{{toLower "DEF"}}"#,
        "ABCdef",
    ),
    (
        r#"{{contains "sweetapp" "eta"}} {{contains "a" "b"}}"#,
        r#"{{contains "sweetapp" "eta"}} {{contains "a" "b"}}"#,
        "true false",
    ),
    (
        r#"{{replace "a.b.c" "." "/" -1}} {{replace "a.b.c" "." "/" 1}}"#,
        r#"{{replace "a.b.c" "." "/" -1}} {{replace "a.b.c" "." "/" 1}}"#,
        "a/b/c a/b.c",
    ),
    (
        r#"{{trimSuffix "app.conf" ".conf"}} {{trimSuffix "x" "y"}}"#,
        r#"{{trimSuffix "app.conf" ".conf"}} {{trimSuffix "x" "y"}}"#,
        "app x",
    ),
    (
        r#"{{fileExists "/etc/hosts"}} {{fileExists "/nope"}}"#,
        r#"{{fileExists "/etc/hosts"}} {{fileExists "/nope"}}"#,
        "true false",
    ),
    (
        r#"{{base64Encode "hello"}} {{base64Decode (getv "/app/b64")}}"#,
        r#"{{base64Encode "hello"}} {{base64Decode (getv "/app/b64")}}"#,
        "aGVsbG8= hello",
    ),
    (
        r#"{{if parseBool (getv "/app/flag")}}on{{else}}off{{end}} {{parseBool "0"}}"#,
        r#"{{#if (parseBool (getv "/app/flag"))}}on{{else}}off{{/if}} {{parseBool "0"}}"#,
        "on false",
    ),
    (
        r#"{{range reverse (getvs "/lens/*")}}{{.}}{{end}} {{range reverse (gets "/lens/*")}}{{.Key}} {{end}}"#,
        r#"{{#each (reverse (getvs "/lens/*"))}}{{this}}{{/each}} {{#each (reverse (gets "/lens/*"))}}{{Key}} {{/each}}"#,
        "321 /lens/cc /lens/b /lens/aaa ",
    ),
    (
        r#"{{range sortByLength (ls "/lens")}}{{.}},{{end}}"#,
        r#"{{#each (sortByLength (ls "/lens"))}}{{this}},{{/each}}"#,
        "b,cc,aaa,",
    ),
    (
        r#"{{range sortKVByLength (gets "/lens/*")}}{{.Value}}{{end}}"#,
        r#"{{#each (sortKVByLength (gets "/lens/*"))}}{{Value}}{{/each}}"#,
        "123",
    ),
    (
        r#"{{add 2 3}} {{sub 2 3}} {{div 7 2}} {{mod 7 2}} {{mul 4 5}}"#,
        r#"{{add 2 3}} {{sub 2 3}} {{div 7 2}} {{mod 7 2}} {{mul 4 5}}"#,
        "5 -1 3 1 20",
    ),
    (
        r#"{{seq 1 4}} {{range seq 3 1}}x{{end}}"#,
        r#"{{#each (seq 1 4)}}{{this}}{{/each}}"#,
        "[1 2 3 4] ",
    ),
    (
        r#"{{add (atoi (getv "/app/port")) 1}}"#,
        r#"{{add (atoi (getv "/app/port")) 1}}"#,
        "8081",
    ),
    (
        r#"{{lookupIP "db.local"}} {{lookupIPV4 "db.local"}} {{lookupIPV6 "db.local"}} {{lookupIP "nx.local"}}"#,
        r#"{{#each (lookupIP "db.local")}}{{this}} {{/each}}"#,
        "[10.0.0.10 10.0.0.9 ::1] [10.0.0.10 10.0.0.9] [::1] []",
    ),
    (
        r#"{{range lookupSRV "etcd" "tcp" "example.com"}}{{.Target}}:{{.Port}}/{{.Priority}}/{{.Weight}} {{end}}"#,
        r#"{{#each (lookupSRV "etcd" "tcp" "example.com")}}{{Target}}:{{Port}}/{{Priority}}/{{Weight}} {{/each}}"#,
        "a.example.com.:2380/10/5 b.example.com.:2380/0/0 ",
    ),
    // Go template features the helpers are used with.
    ("a {{- \" b \" -}} c\n{{- /* gone */ -}}\nd", "", "a b cd"),
    (
        r#"{{$n := getv "/app/name"}}{{if eq $n "Sweet"}}yes{{else if ne $n ""}}other{{end}}{{with $x := "w"}}{{$x}}{{end}}"#,
        "",
        "yesw",
    ),
    (
        r#"{{range $i, $v := getvs "/svc/web/*"}}{{if $i}},{{end}}{{$v}}{{end}}"#,
        "",
        "10.0.0.10:80,10.0.0.1:80,10.0.0.2:80",
    ),
    (
        r#"{{getv "/app/name" | toUpper | printf "%s!"}} {{len (ls "/svc")}}"#,
        "",
        "SWEET! 3",
    ),
];

/// (template, dialect is handlebars, what the error must say, the line it must name).
const ERR: &[(&str, bool, &str, Option<usize>)] = &[
    (
        "line one\n{{getv \"/missing\"}}",
        false,
        "key does not exist: /missing",
        Some(2),
    ),
    (
        "\n\n{{getv \"/missing\"}}",
        true,
        "key does not exist: /missing",
        None,
    ),
    (
        r#"{{get "/app/name/"}}"#,
        false,
        "key does not exist: /app/name/",
        Some(1),
    ),
    ("ok\n{{ if }}", false, "", Some(2)),
    ("{{#each}}", true, "", Some(1)),
    (r#"{{json "[1]"}}"#, false, "cannot unmarshal", Some(1)),
    (r#"{{jsonArray "{}"}}"#, false, "cannot unmarshal", Some(1)),
    (r#"{{map "a"}}"#, false, "invalid map call", Some(1)),
    (r#"{{map 1 2}}"#, false, "map keys must be strings", Some(1)),
    (
        r#"{{base64Decode "%%%"}}"#,
        false,
        "illegal base64 data",
        Some(1),
    ),
    (r#"{{parseBool "maybe"}}"#, true, "invalid syntax", None),
    (
        r#"{{atoi "x1"}}"#,
        false,
        r#"parsing "x1": invalid syntax"#,
        Some(1),
    ),
    (r#"{{div 1 0}}"#, false, "integer divide by zero", Some(1)),
    (r#"{{seq 1 100000000}}"#, false, "longer than", Some(1)),
    (r#"{{nosuchfunc 1}}"#, false, "nosuchfunc", Some(1)),
];

#[test]
fn every_helper_in_both_dialects() {
    let mut failures = vec![];
    for (go, hbs, want) in OK {
        match render("t.tmpl", go, ctx()) {
            Ok(got) if got == *want => {}
            other => failures.push(format!("go {go:?}: {other:?}, want {want:?}")),
        }
        if hbs.is_empty() {
            continue;
        }
        // Handlebars prints lists its own way: compare where the Go output has none.
        let want_hbs = hbs_expect(go, want);
        match render("t.hbs", hbs, ctx()) {
            Ok(got) if got == want_hbs => {}
            other => failures.push(format!("hbs {hbs:?}: {other:?}, want {want_hbs:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The handlebars form's expected output, where it differs from the Go form's.
fn hbs_expect(go: &str, want: &str) -> String {
    match want {
        "[a b c] b" => "a.b.c.".into(),
        "host1 10.0.0.1 8080 1e+06" => "host1 10.0.0.1".into(),
        "[1 2 3 4] " => "1234".into(),
        w if go.contains("lookupIP \"db.local\"") => {
            assert!(w.starts_with("[10.0.0.10 10.0.0.9 ::1]"));
            "10.0.0.10 10.0.0.9 ::1 ".into()
        }
        w => w.into(),
    }
}

#[test]
fn errors_fail_the_render_and_say_where() {
    let mut failures = vec![];
    for (src, hbs, want, line) in ERR {
        let name = if *hbs { "t.hbs" } else { "t.tmpl" };
        match render(name, src, ctx()) {
            Ok(out) => failures.push(format!("{src:?}: rendered {out:?}")),
            Err(e) => {
                let text = e.to_string();
                if !text.contains(want) || !text.starts_with(name) {
                    failures.push(format!("{src:?}: {text:?} lacks {want:?}"));
                }
                if line.is_some() && e.line != *line {
                    failures.push(format!(
                        "{src:?}: line {:?}, want {line:?} ({text})",
                        e.line
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
