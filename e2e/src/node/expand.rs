//! Kubelet-style `$(VAR)` expansion for command, args and env values.
//!
//! `$(NAME)` becomes the value of NAME when NAME is defined, and stays as
//! written when it is not; `$$` is an escaped `$`. This matches the
//! kubelet's rules (k8s.io/kubernetes third_party/forked/golang/expansion).

use std::collections::HashMap;

/// Expands `$(VAR)` references in `input` using `vars`.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(close) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + close];
                        match vars.get(name) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&input[i..i + 3 + close]),
                        }
                        i += 3 + close;
                        continue;
                    }
                }
                _ => {}
            }
        }
        // Push one whole UTF-8 character.
        let ch = input[i..].chars().next().unwrap_or('\u{FFFD}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [("POD_IP", "127.10.0.2"), ("PORT", "8000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_defined_variables() {
        assert_eq!(
            expand("--host=$(POD_IP):$(PORT)", &vars()),
            "--host=127.10.0.2:8000"
        );
    }

    #[test]
    fn leaves_undefined_references_as_written() {
        assert_eq!(expand("$(NOPE)-x", &vars()), "$(NOPE)-x");
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(expand("$$(POD_IP) $$", &vars()), "$(POD_IP) $");
    }

    #[test]
    fn unterminated_reference_is_kept() {
        assert_eq!(expand("a$(POD_IP", &vars()), "a$(POD_IP");
        assert_eq!(expand("é$", &vars()), "é$");
    }
}
