//! Unit files as fleet reads them: go-systemd's lexer (an ordered list of
//! `(section, name, value)`, duplicates kept), fleet's normalised serialisation and its
//! SHA-1 hash, and the `X-Fleet` multi-value split.
//!
//! The lexer copies go-systemd's behaviour byte for byte (see
//! `../shared/reference/fleet-semantics.md` a.1), including its odd corners — text before
//! the first header is skipped, a comment ending in `\` swallows the next line, a blank
//! line ends a continuation and leaves one `\n` on the value — because unit files written
//! for fleet must mean here what they meant there. The one deliberate difference: a line of
//! 2048 bytes or more is refused wherever it is (go-systemd's check depends on where its
//! 4 KiB read buffer happens to fall).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// systemd's LINE_MAX, as fleet enforces it.
pub const LINE_BYTES_MAX: usize = 2048;

/// One `Name=Value` of a unit, in its section. JSON as fleet's API has it: fields in Go's
/// order, empty ones omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOption {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub section: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

impl UnitOption {
    pub fn new(section: &str, name: &str, value: &str) -> Self {
        Self {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {what}")]
pub struct ParseError {
    /// 1-based line where the problem was found.
    pub line: usize,
    pub what: String,
}

/// Parses a unit file into its options, in file order.
pub fn parse(text: &str) -> Result<Vec<UnitOption>, ParseError> {
    Lexer {
        b: text.as_bytes(),
        text,
        pos: 0,
        out: vec![],
    }
    .run()
}

struct Lexer<'a> {
    b: &'a [u8],
    text: &'a str,
    pos: usize,
    out: Vec<UnitOption>,
}

/// Where the lexer is between steps (go-systemd's `lexStep`s).
enum Step {
    BeforeFirstSection,
    SectionOrOption(String),
    OptionValue {
        section: String,
        name: String,
        partial: String,
    },
}

impl Lexer<'_> {
    fn err(&self, at: usize, what: impl Into<String>) -> ParseError {
        let line = 1 + self.b[..at.min(self.b.len())]
            .iter()
            .filter(|c| **c == b'\n')
            .count();
        ParseError {
            line,
            what: what.into(),
        }
    }

    fn run(mut self) -> Result<Vec<UnitOption>, ParseError> {
        let mut step = Step::BeforeFirstSection;
        loop {
            self.check_line_length()?;
            step = match step {
                Step::BeforeFirstSection => match self.next_char() {
                    None => break,
                    Some('[') => Step::SectionOrOption(self.section_header()?),
                    Some('#' | ';') => {
                        self.skip_comment();
                        Step::BeforeFirstSection
                    }
                    Some(_) => Step::BeforeFirstSection,
                },
                Step::SectionOrOption(section) => {
                    let at = self.pos;
                    match self.next_char() {
                        None => break,
                        Some(c) if c.is_whitespace() => Step::SectionOrOption(section),
                        Some('[') => Step::SectionOrOption(self.section_header()?),
                        Some('#' | ';') => {
                            self.skip_comment();
                            Step::SectionOrOption(section)
                        }
                        Some(_) => {
                            self.pos = at;
                            let name = self.option_name()?;
                            Step::OptionValue {
                                section,
                                name,
                                partial: String::new(),
                            }
                        }
                    }
                }
                Step::OptionValue {
                    section,
                    name,
                    partial,
                } => self.option_value(section, name, partial),
            };
        }
        Ok(self.out)
    }

    /// go-systemd refuses input where 2048 bytes from a step's start hold no line end.
    fn check_line_length(&self) -> Result<(), ParseError> {
        let rest = &self.b[self.pos..];
        if rest.len() >= LINE_BYTES_MAX
            && !rest[..LINE_BYTES_MAX]
                .iter()
                .any(|c| *c == b'\n' || *c == b'\r')
        {
            return Err(self.err(
                self.pos,
                format!("line too long (max {LINE_BYTES_MAX} bytes)"),
            ));
        }
        Ok(())
    }

    fn next_char(&mut self) -> Option<char> {
        let c = self.text[self.pos..].chars().next()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// The rest of the line without its `\n` (and a `\r` before it, as Go trims), and
    /// whether the input ended there.
    fn line_rest(&mut self) -> (&str, bool) {
        let rest = &self.text[self.pos..];
        let (line, eof) = match rest.find('\n') {
            Some(i) => {
                self.pos += i + 1;
                (&rest[..i + 1], false)
            }
            None => {
                self.pos = self.b.len();
                (rest, true)
            }
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.strip_suffix('\n').unwrap_or(line);
        (line, eof)
    }

    /// After `[`: the name up to `]` (it may cross lines and is not trimmed), then nothing
    /// but blanks to the end of the line.
    fn section_header(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let Some(end) = self.text[start..].find(']') else {
            return Err(self.err(start, "unable to find end of section"));
        };
        let name = self.text[start..start + end].to_string();
        self.pos = start + end + 1;
        let at = self.pos;
        let (garbage, _) = self.line_rest();
        let garbage = garbage.trim();
        if !garbage.is_empty() {
            let what = format!("found garbage after section name [{name}]: {garbage:?}");
            return Err(self.err(at, what));
        }
        Ok(name)
    }

    /// A comment runs to the end of its line, and on while a line ends in `\` (trailing
    /// spaces dropped): go-systemd's rule, kept so files mean what they meant to fleet.
    fn skip_comment(&mut self) {
        loop {
            let (line, eof) = self.line_rest();
            // Go's `bytes.TrimSuffix(line, " ")`: one space, not all of them.
            let line = line.strip_suffix(' ').unwrap_or(line);
            if !line.ends_with('\\') || eof {
                return;
            }
        }
    }

    fn option_name(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let rest = &self.text[start..];
        match rest.find(['=', '\n', '\r']) {
            Some(i) if rest.as_bytes()[i] == b'=' => {
                self.pos = start + i + 1;
                Ok(rest[..i].trim().to_string())
            }
            Some(i) => Err(self.err(
                start + i,
                format!(
                    "unexpected newline encountered while parsing option name {:?}",
                    rest[..i].trim()
                ),
            )),
            None => Err(self.err(
                self.b.len(),
                format!(
                    "unexpected end of file while parsing option name {:?}",
                    rest.trim()
                ),
            )),
        }
    }

    /// One line of a value; a line ending in `\` continues it (backslash and a `\n`
    /// kept), a blank line or a line without one ends it.
    fn option_value(&mut self, section: String, name: String, mut partial: String) -> Step {
        let (line, eof) = self.line_rest();
        if !line.trim().is_empty() {
            partial.push_str(line);
            if line.ends_with('\\') {
                if !eof {
                    partial.push('\n');
                }
                return Step::OptionValue {
                    section,
                    name,
                    partial,
                };
            }
        }
        let value = match partial.strip_suffix('\n') {
            Some(_) => format!("{}\n", partial.trim()),
            None => partial.trim().to_string(),
        };
        self.out.push(UnitOption {
            section: section.clone(),
            name,
            value,
        });
        Step::SectionOrOption(section)
    }
}

/// fleet's normalised text of a unit: sections in order of first appearance, each
/// section's options grouped under one header in their original order, a blank line
/// between sections. This is what `fleetctl cat` prints and what the hash covers.
pub fn serialize(options: &[UnitOption]) -> String {
    let mut sections: Vec<(&str, Vec<&UnitOption>)> = vec![];
    for o in options {
        match sections.iter_mut().find(|(s, _)| *s == o.section) {
            Some((_, v)) => v.push(o),
            None => sections.push((&o.section, vec![o])),
        }
    }
    let mut out = String::new();
    for (i, (name, opts)) in sections.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push('[');
        out.push_str(name);
        out.push_str("]\n");
        for o in opts {
            out.push_str(&o.name);
            out.push('=');
            out.push_str(&o.value);
            out.push('\n');
        }
    }
    out
}

/// The unit hash: SHA-1 of [`serialize`], as 40 lowercase hex digits.
pub fn hash(options: &[UnitOption]) -> String {
    sha1_smol::Sha1::from(serialize(options)).hexdigest()
}

/// fleet's multi-value split of an `X-Fleet` value: only a value that both starts and
/// ends with `"` is split; quotes toggle and are dropped, a space outside quotes ends an
/// item.
pub fn split_multi(value: &str) -> Vec<String> {
    if !(value.len() >= 2 && value.starts_with('"') && value.ends_with('"')) {
        return vec![value.to_string()];
    }
    let mut items = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    items.push(cur);
    items
}

/// The values of `section`/`name`, in order (X-Fleet values already split).
pub fn values<'a>(options: &'a [UnitOption], section: &str, name: &str) -> Vec<&'a str> {
    options
        .iter()
        .filter(|o| o.section == section && o.name == name)
        .map(|o| o.value.as_str())
        .collect()
}

/// The first `[Unit] Description`, or empty.
pub fn description(options: &[UnitOption]) -> &str {
    values(options, "Unit", "Description")
        .first()
        .copied()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str) -> Vec<(String, String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|o| (o.section, o.name, o.value))
            .collect()
    }

    fn one(s: &str, n: &str, v: &str) -> (String, String, String) {
        (s.into(), n.into(), v.into())
    }

    #[test]
    fn parses_the_seed_apache_unit() {
        let text = "[Unit]\nDescription=My Advanced Service\nAfter=etcd.service\nAfter=docker.service\n\n[Service]\nTimeoutStartSec=0\nExecStartPre=-/usr/bin/docker kill apache1\nExecStart=/usr/bin/docker run --name apache1 -p 8081:80 coreos/apache /usr/sbin/httpd -D FOREGROUND\n\n[X-Fleet]\nConflicts=%p@*.service\n";
        let o = opts(text);
        assert_eq!(o.len(), 7);
        assert_eq!(o[1], one("Unit", "After", "etcd.service"));
        assert_eq!(o[2], one("Unit", "After", "docker.service"));
        assert_eq!(o[6], one("X-Fleet", "Conflicts", "%p@*.service"));
    }

    #[test]
    fn lexing_rules_as_go_systemd() {
        // Junk before the first header is skipped; names and values trimmed; `#` mid-value kept.
        assert_eq!(
            opts("junk=1\n[A]\n  Key  =  v # not a comment \n"),
            vec![one("A", "Key", "v # not a comment")]
        );
        // Headers are not trimmed; sections repeat; names are free-form.
        assert_eq!(
            opts("[ Unit ]\n<<<<=x\n[B]\nk=1\n[ Unit ]\nk=2\n"),
            vec![
                one(" Unit ", "<<<<", "x"),
                one("B", "k", "1"),
                one(" Unit ", "k", "2")
            ]
        );
        // Continuations keep the backslash and a newline; leading blanks of the next line kept.
        assert_eq!(
            opts("[S]\nA=one \\\n   two\nB=x\n"),
            vec![one("S", "A", "one \\\n   two"), one("S", "B", "x")]
        );
        // A continued line's next line starting with '#' is value text.
        assert_eq!(opts("[S]\nA=a\\\n#b\n"), vec![one("S", "A", "a\\\n#b")]);
        // `\` then spaces does not continue; the value ends in `\`.
        assert_eq!(
            opts("[S]\nA=a\\  \nB=b\n"),
            vec![one("S", "A", "a\\"), one("S", "B", "b")]
        );
        // A blank line ends a continuation and keeps one `\n`.
        assert_eq!(
            opts("[S]\nFoo=x \\\n\nB=1\n"),
            vec![one("S", "Foo", "x \\\n"), one("S", "B", "1")]
        );
        // A continuation at end of file keeps the backslash, no newline.
        assert_eq!(
            opts("[S]\nBar \\=Bar \\"),
            vec![one("S", "Bar \\", "Bar \\")]
        );
        // A comment ending in `\` swallows the next line.
        assert_eq!(opts("[S]\n# c \\\nA=1\nB=2\n"), vec![one("S", "B", "2")]);
        // CRLF parses as LF; empty values; empty and comment-only files.
        assert_eq!(
            opts("[S]\r\nA=1\r\nB=\r\n"),
            vec![one("S", "A", "1"), one("S", "B", "")]
        );
        assert!(opts("").is_empty());
        assert!(opts("# only\n; comments\n").is_empty());
        assert_eq!(opts("[x-fleet]\nGlobal=true")[0].0, "x-fleet");
    }

    #[test]
    fn malformed_input_names_the_line() {
        let e = parse("[Unit]\nDescription=x\n[Service\n").unwrap_err();
        assert!(e.what.contains("unable to find end of section"), "{e}");
        let e = parse("[Unit] # c\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.what.contains("found garbage after section name"), "{e}");
        let e = parse("[Unit]\nDescription=x\nNoEquals\nB=1\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.what.contains("unexpected newline"), "{e}");
        let e = parse("[Unit]\nNoEquals").unwrap_err();
        assert!(e.what.contains("end of file"), "{e}");
        // Bare-CR files: the rest after the header is garbage.
        assert!(parse("[Unit]\rA=1\r").is_err());
    }

    #[test]
    fn long_lines_are_refused_at_2048_bytes() {
        let ok = format!("[S]\nA={}\n", "x".repeat(2047 - 2));
        assert!(parse(&ok).is_ok());
        let bad = format!("[S]\nA={}\n", "x".repeat(2048 - 2));
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.what.contains("line too long (max 2048 bytes)"));
        // Deep into a larger file as well.
        let deep = format!("[S]\n{}B={}\n", "A=1\n".repeat(2000), "y".repeat(3000));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn hash_matches_fleets_vectors() {
        assert_eq!(hash(&[]), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let o = parse("[Service]\nExecStart=/bin/sleep 100\n").unwrap();
        assert_eq!(hash(&o), "1c6fb6f3684bafb0c173d8b8b957ceff031180c1");
        let o = parse("[Unit]\nDescription=some description\n").unwrap();
        assert_eq!(hash(&o), "a0f275d46bc6ee0eca06be7c339913c07d99c0c7");
        // Layout, comments and split sections do not change it.
        let a = parse("[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n").unwrap();
        let b = parse("# c\n[Unit]\n  A = 1\nC=3\n\n[Service]\nB=2\n").unwrap();
        assert_eq!(hash(&a), hash(&b));
        assert_eq!(serialize(&a), "[Unit]\nA=1\nC=3\n\n[Service]\nB=2\n");
    }

    #[test]
    fn multi_value_split_as_fleet() {
        let s = |v| split_multi(v);
        assert_eq!(s(r#""a" "b""#), vec!["a", "b"]);
        assert_eq!(s(r#""bar"#), vec![r#""bar"#]);
        assert_eq!(s(r#""bar" ""#), vec!["bar", ""]);
        assert_eq!(s(r#""foo\"bar""#), vec![r"foo\bar"]);
        assert_eq!(s(r#""""#), vec![""]);
        assert_eq!(s("plain value"), vec!["plain value"]);
        assert_eq!(s(r#""a  b""#), vec!["a  b"]);
        assert_eq!(s(r#""a"  "b""#), vec!["a", "", "b"]);
    }
}
