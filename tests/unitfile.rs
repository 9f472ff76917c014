//! The unit-file parser under random input: it never panics, and rendering any options it
//! can represent then parsing them gives the same options back (go-systemd's round trip).

use flotilla::unitfile::file::{hash, parse, serialize, UnitOption};
use proptest::prelude::*;

fn section() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9 _-]{0,10}".prop_filter("no ] in headers", |s| !s.contains(']'))
}

/// Option names: no `=`, no line breaks, trimmed, not starting a header or a comment.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9@%.:_-]{0,15}"
}

/// Values: one line, trimmed, not ending in a backslash (that would continue the line).
fn value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
        .prop_map(|v| v.trim().to_string())
        .prop_filter("a trailing backslash continues the line", |v| {
            !v.ends_with('\\')
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(text in "(?s).{0,400}") {
        let _ = parse(&text);
    }

    #[test]
    fn never_panics_on_unit_like_text(
        lines in prop::collection::vec(prop_oneof![
            Just("[Unit]".to_string()),
            Just("[X-Fleet]".to_string()),
            Just("# comment \\\\".to_string()),
            Just("".to_string()),
            Just("  \\\\".to_string()),
            "[A-Za-z=\\\\ #;\\[\\]\\r]{0,20}",
        ], 0..30),
        crlf in any::<bool>(),
    ) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        let _ = parse(&text);
    }

    #[test]
    fn render_then_parse_round_trips(
        opts in prop::collection::vec((section(), name(), value()), 0..20)
    ) {
        let opts: Vec<UnitOption> = opts.iter().map(|(s, n, v)| UnitOption::new(s, n, v)).collect();
        let text = serialize(&opts);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        // Rendering groups a section's options together; parsing returns them grouped.
        prop_assert_eq!(serialize(&back), text);
        prop_assert_eq!(hash(&back), hash(&opts));
        let mut grouped = vec![];
        let mut seen: Vec<&str> = vec![];
        for o in &opts {
            if !seen.contains(&o.section.as_str()) {
                seen.push(&o.section);
                grouped.extend(opts.iter().filter(|x| x.section == o.section).cloned());
            }
        }
        prop_assert_eq!(back, grouped);
    }
}
