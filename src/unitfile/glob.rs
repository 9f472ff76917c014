//! Go's `path.Match`, the glob dialect of fleet's `Conflicts` and `Replaces`: `*` is any
//! run of characters but `/`, `?` one character, `[a-z]`/`[^a]` classes (negation by `^`
//! only), `\` escapes. A malformed pattern never matches.

/// Does `pattern` match all of `name`? `false` for malformed patterns, as fleet ignores
/// `path.Match`'s error.
pub fn matches(pattern: &str, name: &str) -> bool {
    // The common patterns (`app@*.service`, a plain name) need no parsing: match them
    // on the strings (the scheduler asks this for every pair of units on a machine).
    if !pattern.contains(['?', '[', '\\']) {
        return stars_only(pattern, name);
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    glob(&p, &s).unwrap_or(false)
}

/// A pattern whose only metacharacter is `*` (any run without `/`).
fn stars_only(pattern: &str, name: &str) -> bool {
    let Some((first, tail)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    // Each star takes the shortest run that lets the next literal follow; a run must
    // not cross a '/'.
    for lit in middle.split('*').filter(|l| !l.is_empty()) {
        let Some(at) = rest.find(lit) else {
            return false;
        };
        if rest[..at].contains('/') {
            return false;
        }
        rest = &rest[at + lit.len()..];
    }
    rest.len() >= last.len()
        && rest.ends_with(last)
        && !rest[..rest.len() - last.len()].contains('/')
}

/// `Err(())` for a malformed pattern. Works chunk by chunk: a chunk is the literal run
/// after a (possibly empty) run of stars; a star's chunk is tried at every later start
/// that does not cross a `/`.
fn glob(mut p: &[char], mut s: &[char]) -> Result<bool, ()> {
    'chunks: while !p.is_empty() {
        let (star, chunk, rest) = scan_chunk(p);
        p = rest;
        if star && chunk.is_empty() {
            return Ok(!s.contains(&'/'));
        }
        if let Some(t) = match_chunk(chunk, s)? {
            if t.is_empty() || !p.is_empty() {
                s = t;
                continue;
            }
        }
        if star {
            let mut i = 0;
            while i < s.len() && s[i] != '/' {
                if let Some(t) = match_chunk(chunk, &s[i + 1..])? {
                    // The last chunk must end the name.
                    if !p.is_empty() || t.is_empty() {
                        s = t;
                        continue 'chunks;
                    }
                }
                i += 1;
            }
        }
        // No match; the rest of the pattern must still be well formed.
        while !p.is_empty() {
            let (_, chunk, rest) = scan_chunk(p);
            p = rest;
            match_chunk(chunk, &[])?;
        }
        return Ok(false);
    }
    Ok(s.is_empty())
}

/// Splits off leading stars and the chunk up to the next star outside a class.
fn scan_chunk(mut p: &[char]) -> (bool, &[char], &[char]) {
    let mut star = false;
    while p.first() == Some(&'*') {
        p = &p[1..];
        star = true;
    }
    let mut in_class = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 < p.len() => i += 1,
            '[' => in_class = true,
            ']' => in_class = false,
            '*' if !in_class => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

/// Matches `chunk` against the start of `s`: the rest of `s` on a match. The whole chunk
/// is parsed even after a mismatch, so a malformed one is always an error.
fn match_chunk<'a>(mut chunk: &[char], mut s: &'a [char]) -> Result<Option<&'a [char]>, ()> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            '[' => {
                let r = if failed { '\0' } else { s[0] };
                if !failed {
                    s = &s[1..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut hit = false;
                let mut n = 0;
                loop {
                    if !chunk.is_empty() && chunk[0] == ']' && n > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&'-') {
                        let (h, rest) = class_char(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        hit = true;
                    }
                    n += 1;
                }
                if hit == negated {
                    failed = true;
                }
            }
            '?' => {
                if !failed {
                    if s[0] == '/' {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
            '\\' => {
                chunk = &chunk[1..];
                let Some(&e) = chunk.first() else {
                    return Err(());
                };
                if !failed {
                    if e != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
            l => {
                if !failed {
                    if l != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok((!failed).then_some(s))
}

/// One character of a class, escapes resolved.
fn class_char(chunk: &[char]) -> Result<(char, &[char]), ()> {
    match chunk {
        [] | ['-' | ']', ..] => Err(()),
        ['\\', e, rest @ ..] => Ok((*e, rest)),
        ['\\'] => Err(()),
        [c, rest @ ..] => Ok((*c, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn gos_path_match_table() {
        for (p, s, want) in [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "a", false),
            ("[]a]", "]", false),
            ("[-]", "-", false),
            ("[x-]", "x", false),
            ("[-x]", "x", false),
            ("\\", "a", false),
            ("[a-b-c]", "a", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[^bc", "a", false),
            ("a[", "a", false),
            ("a[", "ab", false),
            ("*x", "xxx", true),
        ] {
            assert_eq!(matches(p, s), want, "{p:?} on {s:?}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_matcher() {
        let pats = [
            "*", "a*", "*a", "a*b", "a*b*c", "**", "a**b", "*/*", "a*/b", "", "abc", "a*a",
        ];
        let names = [
            "", "a", "ab", "abc", "aXbYc", "a/b", "abc/b", "ba", "aa", "aaa", "acb", "a/c/b",
        ];
        for p in pats {
            let chars: Vec<char> = p.chars().collect();
            for n in names {
                let nc: Vec<char> = n.chars().collect();
                let general = super::glob(&chars, &nc).unwrap_or(false);
                assert_eq!(super::stars_only(p, n), general, "{p:?} on {n:?}");
            }
        }
    }

    #[test]
    fn fleet_cases() {
        assert!(matches(
            "%p@*.service".replace("%p", "apache").as_str(),
            "apache@2.service"
        ));
        assert!(matches("b*e", "baz.service"));
        assert!(!matches("foo@[a.service", "foo@a.service"));
        assert!(!matches("Apache*", "apache@1.service"));
        assert!(matches("[!b]az.service", "!az.service"));
    }
}
