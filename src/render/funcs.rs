//! confd's template functions, with confd's semantics, over one value type
//! ([`gotmpl::Value`]) that both dialects use: Go templates directly, handlebars through
//! a JSON bridge.

use super::memkv::{base, dir, MemKv};
use flotilla_shims::host::{HostInfo, Srv};
use gotmpl::{TemplateError, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a render may look at: the resource's keys, and the host (environment, files,
/// DNS, the time) through the seam.
pub struct Ctx {
    /// Shared with the watch loop's copy (a render does not clone 10,000 keys).
    pub kv: Arc<MemKv>,
    pub host: Arc<dyn HostInfo>,
    /// Wall-clock milliseconds at the render (for `datetime`).
    pub now_ms: u64,
}

pub type Helper = fn(&Ctx, &[Value]) -> Result<Value, String>;

/// Every confd function, by name.
pub const HELPERS: &[(&str, Helper)] = &[
    ("exists", exists),
    ("ls", ls),
    ("lsdir", lsdir),
    ("get", get),
    ("gets", gets),
    ("getv", getv),
    ("getvs", getvs),
    ("base", base_f),
    ("dir", dir_f),
    ("split", split),
    ("join", join),
    ("json", json),
    ("jsonArray", json_array),
    ("map", map),
    ("getenv", getenv),
    ("datetime", datetime),
    ("toUpper", to_upper),
    ("toLower", to_lower),
    ("contains", contains),
    ("replace", replace),
    ("trimSuffix", trim_suffix),
    ("fileExists", file_exists),
    ("base64Encode", b64_encode),
    ("base64Decode", b64_decode),
    ("parseBool", parse_bool),
    ("reverse", reverse),
    ("sortByLength", sort_by_length),
    ("sortKVByLength", sort_kv_by_length),
    ("add", add),
    ("sub", sub),
    ("div", div),
    ("mod", modulo),
    ("mul", mul),
    ("seq", seq),
    ("atoi", atoi),
    ("lookupIP", lookup_ip),
    ("lookupIPV4", lookup_ipv4),
    ("lookupIPV6", lookup_ipv6),
    ("lookupSRV", lookup_srv),
];

/// Calls helper `name` (as a Go template would see the error).
pub fn call(ctx: &Ctx, name: &str, f: Helper, args: &[Value]) -> Result<Value, TemplateError> {
    f(ctx, args).map_err(|e| TemplateError::Exec(format!("error calling {name}: {e}")))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::Uint(_) => "int",
        Value::Float(_) => "float64",
        Value::String(_) => "string",
        Value::List(_) => "slice",
        Value::Map(_) => "map",
        _ => "func",
    }
}

fn arity(args: &[Value], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!("wrong number of args: want {n} got {}", args.len()));
    }
    Ok(())
}

fn s(args: &[Value], i: usize) -> Result<&str, String> {
    match args.get(i) {
        Some(Value::String(x)) => Ok(x),
        Some(v) => Err(format!(
            "wrong type for value; expected string; got {}",
            type_name(v)
        )),
        None => Err("missing argument".into()),
    }
}

fn int(args: &[Value], i: usize) -> Result<i64, String> {
    match args.get(i) {
        Some(Value::Int(x)) => Ok(*x),
        Some(Value::Uint(x)) => i64::try_from(*x).map_err(|_| "integer overflow".to_string()),
        Some(v) => Err(format!(
            "wrong type for value; expected int; got {}",
            type_name(v)
        )),
        None => Err("missing argument".into()),
    }
}

fn strings(v: Vec<String>) -> Value {
    Value::List(
        v.into_iter()
            .map(|x| Value::String(x.into()))
            .collect::<Vec<_>>()
            .into(),
    )
}

/// A key/value pair as confd's templates see it: `.Key`, `.Value`.
fn pair(k: &str, v: &str) -> Value {
    let mut m = BTreeMap::new();
    m.insert(Arc::<str>::from("Key"), Value::String(k.into()));
    m.insert(Arc::<str>::from("Value"), Value::String(v.into()));
    Value::Map(Arc::new(m))
}

fn exists(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(Value::Bool(c.kv.exists(s(a, 0)?)))
}

fn ls(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(strings(c.kv.ls(s(a, 0)?)))
}

fn lsdir(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(strings(c.kv.lsdir(s(a, 0)?)))
}

fn get(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let (k, v) = c.kv.get(s(a, 0)?).map_err(|e| e.to_string())?;
    Ok(pair(k, v))
}

fn gets(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let pairs: Vec<Value> =
        c.kv.gets(s(a, 0)?)
            .into_iter()
            .map(|(k, v)| pair(k, v))
            .collect();
    Ok(Value::List(pairs.into()))
}

fn getv(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    if a.is_empty() || a.len() > 2 {
        return Err(format!("wrong number of args: want 1 or 2 got {}", a.len()));
    }
    let default = if a.len() == 2 { Some(s(a, 1)?) } else { None };
    let v = c.kv.getv(s(a, 0)?, default).map_err(|e| e.to_string())?;
    Ok(Value::String(v.into()))
}

fn getvs(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(strings(c.kv.getvs(s(a, 0)?)))
}

fn base_f(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(Value::String(base(s(a, 0)?).into()))
}

fn dir_f(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(Value::String(dir(s(a, 0)?).into()))
}

fn split(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 2)?;
    let (text, sep) = (s(a, 0)?, s(a, 1)?);
    // Go's strings.Split: an empty separator splits into characters.
    let parts: Vec<String> = if sep.is_empty() {
        text.chars().map(String::from).collect()
    } else {
        text.split(sep).map(String::from).collect()
    };
    Ok(strings(parts))
}

fn join(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 2)?;
    let Value::List(items) = &a[0] else {
        return Err(format!(
            "wrong type for value; expected []string; got {}",
            type_name(&a[0])
        ));
    };
    let parts: Result<Vec<String>, String> = items
        .iter()
        .map(|v| match v {
            Value::String(x) => Ok(x.to_string()),
            other => Err(format!(
                "wrong type for value; expected string; got {}",
                type_name(other)
            )),
        })
        .collect();
    Ok(Value::String(parts?.join(s(a, 1)?).into()))
}

/// Go's `%v` for a float64 (JSON numbers are float64 in Go): shortest digits, exponent
/// form below 1e-4 and from 1e6 on (`%v` decides with precision 6) (`1000000` → `1e+06`).
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    format!("{f}")
}

fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::String(go_float(n.as_f64().unwrap_or(0.0)).into()),
        serde_json::Value::String(x) => Value::String(x.as_str().into()),
        serde_json::Value::Array(a) => {
            Value::List(a.iter().map(from_json).collect::<Vec<_>>().into())
        }
        serde_json::Value::Object(o) => Value::Map(Arc::new(
            o.iter()
                .map(|(k, v)| (Arc::<str>::from(k.as_str()), from_json(v)))
                .collect(),
        )),
    }
}

fn json(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let v: serde_json::Value = serde_json::from_str(s(a, 0)?).map_err(|e| e.to_string())?;
    match v {
        serde_json::Value::Object(_) | serde_json::Value::Null => Ok(from_json(&v)),
        _ => Err("json: cannot unmarshal into a map (not a JSON object)".into()),
    }
}

fn json_array(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let v: serde_json::Value = serde_json::from_str(s(a, 0)?).map_err(|e| e.to_string())?;
    match v {
        serde_json::Value::Array(_) | serde_json::Value::Null => Ok(from_json(&v)),
        _ => Err("json: cannot unmarshal into a slice (not a JSON array)".into()),
    }
}

fn map(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    if !a.len().is_multiple_of(2) {
        return Err("invalid map call".into());
    }
    let mut m = BTreeMap::new();
    for kv in a.chunks(2) {
        let Value::String(k) = &kv[0] else {
            return Err("map keys must be strings".into());
        };
        m.insert(k.clone(), kv[1].clone());
    }
    Ok(Value::Map(Arc::new(m)))
}

fn getenv(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    if a.is_empty() || a.len() > 2 {
        return Err(format!("wrong number of args: want 1 or 2 got {}", a.len()));
    }
    let v = c.host.getenv(s(a, 0)?).filter(|v| !v.is_empty());
    let v = match (v, a.len()) {
        (Some(v), _) => v,
        (None, 2) => s(a, 1)?.to_string(),
        (None, _) => String::new(),
    };
    Ok(Value::String(v.into()))
}

/// `datetime`: Go's `time.Now()` as a template prints it (UTC).
fn datetime(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 0)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.now_ms);
    let iso = humantime::format_rfc3339_nanos(t).to_string();
    let (date, rest) = iso.split_once('T').unwrap_or((&iso, ""));
    let time = rest.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let frac = frac.trim_end_matches('0');
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    Ok(Value::String(
        format!("{date} {hms}{frac} +0000 UTC").into(),
    ))
}

fn to_upper(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(Value::String(s(a, 0)?.to_uppercase().into()))
}

fn to_lower(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(Value::String(s(a, 0)?.to_lowercase().into()))
}

fn contains(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 2)?;
    Ok(Value::Bool(s(a, 0)?.contains(s(a, 1)?)))
}

/// Go's `strings.Replace(s, old, new, n)`: `n < 0` replaces all.
fn replace(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 4)?;
    let (text, old, new, n) = (s(a, 0)?, s(a, 1)?, s(a, 2)?, int(a, 3)?);
    let out = if n < 0 {
        text.replace(old, new)
    } else {
        text.replacen(old, new, n as usize)
    };
    Ok(Value::String(out.into()))
}

fn trim_suffix(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 2)?;
    let (text, suffix) = (s(a, 0)?, s(a, 1)?);
    Ok(Value::String(
        text.strip_suffix(suffix).unwrap_or(text).into(),
    ))
}

fn file_exists(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    Ok(Value::Bool(c.host.file_exists(s(a, 0)?)))
}

fn b64_encode(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    use base64::Engine as _;
    arity(a, 1)?;
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD
            .encode(s(a, 0)?)
            .into(),
    ))
}

fn b64_decode(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    use base64::Engine as _;
    arity(a, 1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s(a, 0)?)
        .map_err(|e| format!("illegal base64 data: {e}"))?;
    Ok(Value::String(
        String::from_utf8_lossy(&bytes).into_owned().into(),
    ))
}

/// Go's `strconv.ParseBool`.
fn parse_bool(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let v = s(a, 0)?;
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Value::Bool(true)),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Value::Bool(false)),
        _ => Err(format!("strconv.ParseBool: parsing {v:?}: invalid syntax")),
    }
}

fn list(a: &[Value]) -> Result<Vec<Value>, String> {
    match a.first() {
        Some(Value::List(l)) => Ok(l.to_vec()),
        Some(v) => Err(format!(
            "wrong type for value; expected slice; got {}",
            type_name(v)
        )),
        None => Err("missing argument".into()),
    }
}

fn reverse(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let mut l = list(a)?;
    l.reverse();
    Ok(Value::List(l.into()))
}

fn key_of(v: &Value) -> String {
    match v {
        Value::Map(m) => m.get("Key").map(|k| k.to_string()).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn sort_by_length(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let mut l = list(a)?;
    l.sort_by_key(|v| v.to_string().len());
    Ok(Value::List(l.into()))
}

fn sort_kv_by_length(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let mut l = list(a)?;
    l.sort_by_key(|v| key_of(v).len());
    Ok(Value::List(l.into()))
}

fn arith(a: &[Value], op: fn(i64, i64) -> Option<i64>, what: &str) -> Result<Value, String> {
    arity(a, 2)?;
    op(int(a, 0)?, int(a, 1)?)
        .map(Value::Int)
        .ok_or_else(|| format!("{what}: integer divide by zero or overflow"))
}

fn add(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arith(a, i64::checked_add, "add")
}

fn sub(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arith(a, i64::checked_sub, "sub")
}

fn div(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arith(a, i64::checked_div, "div")
}

fn modulo(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arith(a, i64::checked_rem, "mod")
}

fn mul(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arith(a, i64::checked_mul, "mul")
}

/// Sequences this long at most (a template cannot ask for a billion integers).
pub const SEQ_MAX: i64 = 1_000_000;

fn seq(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 2)?;
    let (first, last) = (int(a, 0)?, int(a, 1)?);
    if last.saturating_sub(first) >= SEQ_MAX {
        return Err(format!("seq {first} {last}: longer than {SEQ_MAX}"));
    }
    Ok(Value::List(
        (first..=last).map(Value::Int).collect::<Vec<_>>().into(),
    ))
}

/// Go's `strconv.Atoi`.
fn atoi(_: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 1)?;
    let v = s(a, 0)?;
    v.parse::<i64>()
        .map(Value::Int)
        .map_err(|_| format!("strconv.Atoi: parsing {v:?}: invalid syntax"))
}

fn ips(c: &Ctx, a: &[Value], keep: fn(&str) -> bool) -> Result<Value, String> {
    arity(a, 1)?;
    // As confd: a failed lookup is an empty list, not an error.
    let found = c.host.lookup_ip(s(a, 0)?).unwrap_or_else(|e| {
        tracing::warn!("{e}");
        Vec::new()
    });
    let mut v: Vec<String> = found
        .into_iter()
        .map(|ip| ip.to_string())
        .filter(|ip| keep(ip))
        .collect();
    v.sort();
    v.dedup();
    Ok(strings(v))
}

fn lookup_ip(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    ips(c, a, |_| true)
}

fn lookup_ipv4(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    ips(c, a, |ip| ip.contains('.'))
}

fn lookup_ipv6(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    ips(c, a, |ip| ip.contains(':'))
}

/// `lookupSRV service proto name`: records sorted as confd sorts them (by
/// target, port, priority, weight written one after another).
fn lookup_srv(c: &Ctx, a: &[Value]) -> Result<Value, String> {
    arity(a, 3)?;
    let found = c.host.lookup_srv(s(a, 0)?, s(a, 1)?, s(a, 2)?);
    let mut recs: Vec<Srv> = found.unwrap_or_else(|e| {
        tracing::warn!("{e}");
        Vec::new()
    });
    recs.sort_by_key(|r| format!("{}{}{}{}", r.target, r.port, r.priority, r.weight));
    let out: Vec<Value> = recs
        .into_iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            m.insert(Arc::<str>::from("Target"), Value::String(r.target.into()));
            m.insert(Arc::<str>::from("Port"), Value::Int(i64::from(r.port)));
            m.insert(
                Arc::<str>::from("Priority"),
                Value::Int(i64::from(r.priority)),
            );
            m.insert(Arc::<str>::from("Weight"), Value::Int(i64::from(r.weight)));
            Value::Map(Arc::new(m))
        })
        .collect();
    Ok(Value::List(out.into()))
}
