//! Unit names: their parts (prefix, instance, template) and fleet's validation.

use thiserror::Error;

/// The longest unit name fleet accepts, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

const SUFFIXES: &[&str] = &[
    "automount",
    "busname",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "snapshot",
    "socket",
    "swap",
    "target",
    "timer",
];
const TEMPLATE_SUFFIXES: &[&str] = &["path", "service", "socket", "target", "timer"];

/// A unit name's parts: `foo@bar.service` → prefix `foo`, instance `bar`, suffix
/// `service`. Split at the last `.`, then at the first `@`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameInfo<'a> {
    pub full: &'a str,
    /// The name without its suffix (`%N`).
    pub stem: &'a str,
    pub prefix: &'a str,
    /// Empty for plain units and templates.
    pub instance: &'a str,
    pub suffix: &'a str,
    pub has_at: bool,
}

impl<'a> NameInfo<'a> {
    pub fn new(full: &'a str) -> Self {
        let (stem, suffix) = match full.rfind('.') {
            Some(i) => (&full[..i], &full[i + 1..]),
            None => (full, ""),
        };
        let (prefix, instance, has_at) = match stem.find('@') {
            Some(i) => (&stem[..i], &stem[i + 1..], true),
            None => (stem, "", false),
        };
        Self {
            full,
            stem,
            prefix,
            instance,
            suffix,
            has_at,
        }
    }

    /// `name@.service`: serves instances, is never run itself.
    pub fn is_template(&self) -> bool {
        self.has_at && self.instance.is_empty()
    }

    pub fn is_instance(&self) -> bool {
        self.has_at && !self.instance.is_empty()
    }

    /// The template an instance comes from: `foo@1.service` → `foo@.service`.
    pub fn template(&self) -> Option<String> {
        self.is_instance()
            .then(|| format!("{}@.{}", self.prefix, self.suffix))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// fleet's `ValidateName`, its checks in its order and its messages.
pub fn validate(name: &str) -> Result<(), NameError> {
    let fail = |m: String| Err(NameError(m));
    if name.is_empty() {
        return fail("unit name cannot be empty".into());
    }
    if name.len() > NAME_BYTES_MAX {
        return fail(format!(
            "unit name exceeds maximum length ({NAME_BYTES_MAX})"
        ));
    }
    let Some(dot) = name.rfind('.') else {
        return fail(r#"unit name must contain ".""#.into());
    };
    let suffix = &name[dot + 1..];
    if suffix.is_empty() {
        return fail(r#"unit name cannot end in ".""#.into());
    }
    if !SUFFIXES.contains(&suffix) {
        return fail(format!("invalid unit type: {suffix:?}"));
    }
    if name.contains('@') && !TEMPLATE_SUFFIXES.contains(&suffix) {
        return fail(format!("invalid unit type for template: {suffix:?}"));
    }
    if let Some(c) = name[..dot]
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return fail(format!("invalid character {c:?} in unit name"));
    }
    if name.starts_with('@') {
        return fail(r#"unit name cannot start in "@""#.into());
    }
    Ok(())
}

/// Specifiers fleet expands in `[X-Fleet]` values, in its order, as plain replacements:
/// `%n` full name, `%N` name without suffix, `%p` prefix, `%i` instance. Every other `%x`
/// (and `%%`) stays as it is.
pub fn expand_fleet(value: &str, name: &NameInfo) -> String {
    value
        .replace("%n", name.full)
        .replace("%N", name.stem)
        .replace("%p", name.prefix)
        .replace("%i", name.instance)
}

/// What the agent knows of its machine for the specifiers fleet leaves to systemd.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// `%H`
    pub hostname: String,
    /// `%m`
    pub machine_id: String,
    /// `%b`
    pub boot_id: String,
}

/// systemd's expansion for Exec lines, in one left-to-right pass: `%n %N %p %i %H %m
/// %b`, `%%` → `%`, and an unknown specifier left as written.
pub fn expand_exec(value: &str, name: &NameInfo, host: &Host) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(name.full),
            Some('N') => out.push_str(name.stem),
            Some('p') => out.push_str(name.prefix),
            Some('i') => out.push_str(name.instance),
            Some('H') => out.push_str(&host.hostname),
            Some('m') => out.push_str(&host.machine_id),
            Some('b') => out.push_str(&host.boot_id),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_as_fleet_splits_them() {
        let n = NameInfo::new("foo@bar@baz.service");
        assert_eq!((n.prefix, n.instance), ("foo", "bar@baz"));
        let n = NameInfo::new("foo.1@2.service");
        assert_eq!((n.prefix, n.instance, n.stem), ("foo.1", "2", "foo.1@2"));
        let n = NameInfo::new("apache@.service");
        assert!(n.is_template() && !n.is_instance());
        let n = NameInfo::new("apache@12.service");
        assert_eq!(n.template().as_deref(), Some("apache@.service"));
        let n = NameInfo::new("plain.service");
        assert_eq!((n.prefix, n.instance, n.template()), ("plain", "", None));
    }

    #[test]
    fn validation_in_fleets_order() {
        for ok in [
            "a.service",
            "foo@1.service",
            "foo@.service",
            "x:y_z-w\\v.socket",
            "a.b.mount",
        ] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("foo", r#"must contain ".""#),
            ("foo.", "cannot end in"),
            ("foo.bar", r#"invalid unit type: "bar""#),
            ("foo@1.mount", r#"invalid unit type for template: "mount""#),
            ("fo o.service", "invalid character ' ' in unit name"),
            ("@foo.service", r#"cannot start in "@""#),
            ("foo.Service", "invalid unit type"),
        ] {
            let e = validate(bad).unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
        assert!(validate(&format!("{}.service", "a".repeat(250))).is_err());
        assert!(validate(&format!("{}.service", "a".repeat(248))).is_ok());
    }

    #[test]
    fn fleet_expands_only_its_four_specifiers() {
        let n = NameInfo::new("foo@bar.service");
        assert_eq!(
            expand_fleet("%n %N %p %i %m %H %%", &n),
            "foo@bar.service foo@bar foo bar %m %H %%"
        );
        let plain = NameInfo::new("plain.service");
        assert_eq!(expand_fleet("hostname=%i", &plain), "hostname=");
    }

    #[test]
    fn exec_lines_get_systemds_specifiers() {
        let n = NameInfo::new("nginx-presence@3.service");
        let h = Host {
            hostname: "h1".into(),
            machine_id: "abc".into(),
            boot_id: "b00t".into(),
        };
        assert_eq!(
            expand_exec("docker rm nginx-presence-%i %H %m %b 100%% %z %", &n, &h),
            "docker rm nginx-presence-3 h1 abc b00t 100% %z %"
        );
    }
}
