//! Calendar and e-mail addresses: the one place that decides when two
//! addresses are the same person (`mailto:` optional, case-insensitive), and
//! the glob patterns policies use to match them.

/// The bare, lower-cased e-mail address of a calendar address or an e-mail
/// address: `MAILTO:Alice@Example.com` → `alice@example.com`.
pub fn bare(addr: &str) -> String {
    let a = addr.trim();
    let a = strip_mailto(a).unwrap_or(a);
    a.trim().trim_matches(['<', '>']).to_lowercase()
}

/// The canonical calendar address: lower-cased with `mailto:`; a bare e-mail
/// address gets the scheme, other URIs are only lower-cased.
pub fn canonical(addr: &str) -> String {
    let a = addr.trim();
    if strip_mailto(a).is_some() {
        format!("mailto:{}", bare(a))
    } else if looks_like_email(a) {
        format!("mailto:{}", a.to_lowercase())
    } else {
        a.to_lowercase()
    }
}

/// The address after a `mailto:` scheme (any case), if it has one.
fn strip_mailto(a: &str) -> Option<&str> {
    // Byte-wise: a multi-byte character must not be cut.
    if a.as_bytes().get(..7)?.eq_ignore_ascii_case(b"mailto:") {
        a.get(7..)
    } else {
        None
    }
}

/// A loose check for `local@domain` (no spaces, one `@`, a dot-free domain allowed).
pub fn looks_like_email(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !a.contains(char::is_whitespace)
        && !a.contains(':')
}

/// The person behind an address, for counting answers against the caps:
/// lower-cased, without `mailto:`, and without a sub-address (`alice+x@`
/// and `Alice@` are one organizer).
pub fn cap_key(addr: &str) -> String {
    let a = bare(addr);
    match a.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split('+').next().unwrap_or(local);
            format!("{local}@{domain}")
        }
        None => a,
    }
}

/// The domain of an e-mail address, lower-cased.
pub fn domain(addr: &str) -> Option<String> {
    bare(addr).rsplit_once('@').map(|(_, d)| d.to_string())
}

/// Whether a glob (`*` any run, `?` one character; case-insensitive) matches
/// an address. A pattern without `@` matches the domain and its subdomains:
/// `example.com` matches `a@example.com` and `a@eu.example.com`.
pub fn glob_matches(pattern: &str, addr: &str) -> bool {
    let addr = bare(addr);
    let pattern = bare(pattern);
    if !pattern.contains('@') {
        let Some(d) = domain(&addr) else {
            return false;
        };
        return glob(&pattern, &d) || glob(&format!("*.{pattern}"), &d);
    }
    glob(&pattern, &addr)
}

/// Whether a glob (`*` any run, `?` one character) matches a text, ignoring case.
pub fn glob_text(pattern: &str, text: &str) -> bool {
    glob(&pattern.to_lowercase(), &text.to_lowercase())
}

fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_strips_scheme_and_case() {
        assert_eq!(bare("MAILTO:Alice@Example.COM"), "alice@example.com");
        assert_eq!(bare("<bob@x.org>"), "bob@x.org");
    }

    #[test]
    fn canonical_adds_scheme_to_plain_addresses() {
        assert_eq!(canonical("Alice@Example.com"), "mailto:alice@example.com");
        assert_eq!(canonical("mailto:A@B.c"), "mailto:a@b.c");
        assert_eq!(canonical("urn:uuid:ABC"), "urn:uuid:abc");
    }

    #[test]
    fn regression_fuzz_multibyte_at_the_scheme_boundary() {
        // Found by the fuzzer: slicing at byte 7 inside a multi-byte character.
        assert_eq!(bare("mailtoé@x"), "mailtoé@x");
        assert_eq!(canonical("abcdefé"), "abcdefé");
        assert_eq!(bare("mailto:é@x"), "é@x");
    }

    #[test]
    fn cap_keys_fold_case_and_sub_addresses() {
        assert_eq!(cap_key("mailto:Alice+x@Example.com"), "alice@example.com");
        assert_eq!(cap_key("alice@example.com"), "alice@example.com");
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*@example.com", "mailto:Alice@example.com"));
        assert!(!glob_matches("*@example.com", "alice@example.org"));
        assert!(glob_matches("example.com", "a@eu.example.com"));
        assert!(glob_matches("a?ice@*", "alice@x.y"));
        assert!(!glob_matches("example.com", "a@badexample.com"));
    }
}
