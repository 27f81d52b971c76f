//! fnmatch(3) as modprobe uses it for `alias` globs.

/// fnmatch(3) without flags, as modprobe matches `alias` globs against a
/// device's modalias: `*`, `?`, and `[...]` sets with ranges and `!`/`^`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match_set(p, pi, t[ti]),
            Some(&c) if c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the set starting at `p[start] == b'['`; returns the
/// index after the closing `]` on a match. An unclosed `[` matches itself.
fn match_set(p: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while let Some(&lo) = p.get(i) {
        if lo == b']' && !first {
            return (hit != negate).then_some(i + 1);
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
            hit |= (lo..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    (c == b'[').then_some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_modprobe() {
        let virtio_pci = "pci:v00001AF4d*sv*sd*bc*sc*i*";
        assert!(glob_match(
            virtio_pci,
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!glob_match(
            virtio_pci,
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
        ));
        let xhci = "pci:v*d*sv*sd*bc0Csc03i30*";
        assert!(glob_match(
            xhci,
            "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30"
        ));
        assert!(!glob_match(
            xhci,
            "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i20"
        ));
        assert!(glob_match(
            "usb:v0BC2p3300d[0-1]*",
            "usb:v0BC2p3300d0100dc00"
        ));
        assert!(!glob_match(
            "usb:v0BC2p3300d[0-1]*",
            "usb:v0BC2p3300d2100dc00"
        ));
        assert!(glob_match("a[!x]c", "abc") && !glob_match("a[!b]c", "abc"));
        assert!(glob_match("a[]]c", "a]c"));
        assert!(glob_match("a?c", "abc") && !glob_match("a?c", "ac"));
        assert!(glob_match("*", "") && glob_match("a**", "a"));
        assert!(!glob_match("a", "") && !glob_match("", "a"));
        // An unclosed set is a literal `[`.
        assert!(glob_match("a[b", "a[b"));
    }
}
