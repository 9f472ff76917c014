//! Template resources: confd's `conf.d/*.toml` files (`[template]` with `src`, `dest`,
//! `keys`, `prefix`, `mode`, `owner`/`uid`/`gid`, `check_cmd`, `reload_cmd`). Parsing is
//! pure; a bad resource is an error naming its file and field, and only it is skipped.

use flotilla_shims::host::HostInfo;
use thiserror::Error;

/// Keys one resource may name.
pub const KEYS_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The TOML file it came from (errors name it).
    pub file: String,
    /// The template's path (under `<confdir>/templates`).
    pub src: String,
    pub dest: String,
    /// Store keys to read, the prefix already joined on (`path.Join(prefix, key)`).
    pub keys: Vec<String>,
    /// Stripped from store keys before the template sees them.
    pub prefix: String,
    /// Permission bits; `None`: the destination's own, or 0644 for a new file.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub check_cmd: Option<String>,
    pub reload_cmd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}: {what}")]
pub struct ResourceError {
    pub file: String,
    pub what: String,
}

/// Go's `path.Join` on absolute store paths.
pub fn join(prefix: &str, key: &str) -> String {
    crate::kv::path::clean(&format!("/{prefix}/{key}"))
}

fn field_str(t: &toml::Table, name: &str) -> Result<Option<String>, String> {
    match t.get(name) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("{name}: expected a string, got {}", v.type_str())),
    }
}

fn field_id(t: &toml::Table, name: &str) -> Result<Option<u32>, String> {
    match t.get(name) {
        None => Ok(None),
        Some(toml::Value::Integer(-1)) => Ok(None),
        Some(toml::Value::Integer(i)) => u32::try_from(*i)
            .map(Some)
            .map_err(|_| format!("{name}: {i} is not a user or group id")),
        Some(v) => Err(format!("{name}: expected an integer, got {}", v.type_str())),
    }
}

/// Go's `strconv.ParseUint(mode, 0, 32)`: `0644` and `0o644` are octal, `0x1a4` hex.
pub fn parse_mode(mode: &str) -> Result<u32, String> {
    let m = mode.trim();
    let parsed = if let Some(h) = m.strip_prefix("0x").or_else(|| m.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else if let Some(o) = m.strip_prefix("0o").or_else(|| m.strip_prefix("0O")) {
        u32::from_str_radix(o, 8)
    } else if m.len() > 1 && m.starts_with('0') {
        u32::from_str_radix(&m[1..], 8)
    } else {
        m.parse()
    };
    match parsed {
        Ok(v) if v <= 0o7777 => Ok(v),
        _ => Err(format!(
            "mode: {mode:?} is not a file mode (write it like \"0644\")"
        )),
    }
}

fn keys(t: &toml::Table) -> Result<Vec<String>, String> {
    let Some(v) = t.get("keys") else {
        return Ok(Vec::new());
    };
    let toml::Value::Array(items) = v else {
        return Err(format!(
            "keys: expected an array of strings, got {}",
            v.type_str()
        ));
    };
    if items.len() > KEYS_MAX {
        return Err(format!("keys: {} keys, at most {KEYS_MAX}", items.len()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, k)| match k {
            toml::Value::String(s) => Ok(s.clone()),
            other => Err(format!(
                "keys[{i}]: expected a string, got {}",
                other.type_str()
            )),
        })
        .collect()
}

/// Parses one resource file. `template_dir` is `<confdir>/templates`; a non-empty
/// `prefix_override` (`--prefix`) replaces the resource's own prefix, as in confd.
pub fn parse(
    file: &str,
    text: &str,
    template_dir: &str,
    prefix_override: Option<&str>,
    host: &dyn HostInfo,
) -> Result<Resource, ResourceError> {
    let err = |what: String| ResourceError {
        file: file.to_string(),
        what,
    };
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        err(format!("not valid TOML: {}", e.to_string().trim_end()))
    })?;
    let t = match doc.get("template") {
        Some(toml::Value::Table(t)) => t,
        Some(v) => {
            return Err(err(format!(
                "[template]: expected a table, got {}",
                v.type_str()
            )))
        }
        None => return Err(err("no [template] table".into())),
    };
    parse_table(file, t, template_dir, prefix_override, host).map_err(err)
}

fn parse_table(
    file: &str,
    t: &toml::Table,
    template_dir: &str,
    prefix_override: Option<&str>,
    host: &dyn HostInfo,
) -> Result<Resource, String> {
    let src = field_str(t, "src")?.filter(|s| !s.is_empty());
    let src = src.ok_or("src: missing (the template's file name under templates/)")?;
    let dest = field_str(t, "dest")?.filter(|s| !s.is_empty());
    let dest = dest.ok_or("dest: missing (the file to write)")?;
    let mut prefix = field_str(t, "prefix")?.unwrap_or_default();
    if let Some(p) = prefix_override.filter(|p| !p.is_empty()) {
        prefix = p.to_string();
    }
    let prefix = join(&prefix, "");
    let mode = field_str(t, "mode")?.filter(|m| !m.is_empty());
    let mode = mode.map(|m| parse_mode(&m)).transpose()?;
    let mut uid = field_id(t, "uid")?;
    if let Some(owner) = field_str(t, "owner")?.filter(|o| !o.is_empty()) {
        let id = host
            .user_uid(&owner)
            .ok_or(format!("owner: no user {owner:?}"))?;
        uid = Some(id);
    }
    let src_path = if src.starts_with('/') {
        src
    } else {
        format!("{}/{src}", template_dir.trim_end_matches('/'))
    };
    Ok(Resource {
        file: file.to_string(),
        src: src_path,
        dest,
        keys: keys(t)?.iter().map(|k| join(&prefix, k)).collect(),
        prefix,
        mode,
        uid,
        gid: field_id(t, "gid")?,
        check_cmd: field_str(t, "check_cmd")?.filter(|c| !c.trim().is_empty()),
        reload_cmd: field_str(t, "reload_cmd")?.filter(|c| !c.trim().is_empty()),
    })
}

impl Resource {
    /// The key under which all of this resource's keys lie: what one recursive watch
    /// covers.
    pub fn watch_root(&self) -> String {
        let mut root: Option<Vec<&str>> = None;
        for k in &self.keys {
            let segs: Vec<&str> = k.split('/').filter(|s| !s.is_empty()).collect();
            root = Some(match root {
                None => segs,
                Some(r) => r
                    .iter()
                    .zip(&segs)
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| *a)
                    .collect(),
            });
        }
        format!("/{}", root.unwrap_or_default().join("/"))
    }

    /// A store key as the template sees it: the prefix stripped (`path.Join("/", ...)`).
    pub fn strip(&self, key: &str) -> String {
        let rest = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
        join("/", rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shims::host::FixedHost;

    fn p(text: &str) -> Result<Resource, ResourceError> {
        parse(
            "/etc/confd/conf.d/x.toml",
            text,
            "/etc/confd/templates",
            None,
            &FixedHost::default(),
        )
    }

    #[test]
    fn seed_resource() {
        let r = p(r#"[template]
src = "nginx.tmpl"
dest = "/etc/nginx/sites-enabled/app.conf"
keys = ["/services/sweetapp"]
mode = "0644"
check_cmd = "/usr/sbin/nginx -t -c {{.src}}"
reload_cmd = "/usr/sbin/service nginx reload"
"#)
        .unwrap();
        assert_eq!(r.src, "/etc/confd/templates/nginx.tmpl");
        assert_eq!(r.keys, ["/services/sweetapp"]);
        assert_eq!((r.mode, r.prefix.as_str()), (Some(0o644), "/"));
        assert_eq!(r.watch_root(), "/services/sweetapp");
        assert_eq!(r.strip("/services/sweetapp/a"), "/services/sweetapp/a");
    }

    #[test]
    fn prefix_joins_keys_and_is_stripped() {
        let r =
            p("[template]\nsrc='a'\ndest='/tmp/a'\nprefix='app'\nkeys=['/db/', 'web']\n").unwrap();
        assert_eq!(r.keys, ["/app/db", "/app/web"]);
        assert_eq!(r.watch_root(), "/app");
        assert_eq!(r.strip("/app/db/x"), "/db/x");
        let over = parse(
            "f",
            "[template]\nsrc='a'\ndest='/a'\nprefix='app'\nkeys=['k']",
            "t",
            Some("/other"),
            &FixedHost::default(),
        );
        assert_eq!(over.unwrap().keys, ["/other/k"]);
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            ("[template]\ndest='/a'", "src: missing"),
            (
                "[template]\nsrc='a'\ndest='/a'\nmode='rw'",
                "mode: \"rw\" is not a file mode",
            ),
            (
                "[template]\nsrc='a'\ndest='/a'\nmode=420",
                "mode: expected a string, got integer",
            ),
            (
                "[template]\nsrc='a'\ndest='/a'\nkeys='x'",
                "keys: expected an array",
            ),
            (
                "[template]\nsrc='a'\ndest='/a'\nkeys=[1]",
                "keys[0]: expected a string",
            ),
            (
                "[template]\nsrc='a'\ndest='/a'\nowner='nobody-here'",
                "owner: no user",
            ),
            ("[template]\nsrc='a'\ndest='/a'\nuid=-5", "uid: -5 is not"),
            ("[tmpl]\nsrc='a'", "no [template] table"),
            ("[template\nsrc=", "not valid TOML"),
        ];
        for (text, want) in cases {
            let e = p(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/confd/conf.d/x.toml: "), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn modes_parse_as_go_does() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert_eq!(parse_mode("420"), Ok(420));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("070000").is_err());
    }
}
