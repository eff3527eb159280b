//! Kubernetes name, label and quantity syntax, written twice on purpose:
//! as CEL for the schema (the API server refuses at `kubectl apply`) and as
//! plain Rust for the operator's edge ([`super::check`]), which refuses an
//! object stored before a rule existed with the same message. The tests
//! below run both over the same cases so they cannot drift apart.

/// The longest `metadata.name`: the name becomes the Service's name (a
/// DNS-1035 label, at most 63) and the value of the
/// `serving.steward.dev/service` and `app.kubernetes.io/instance` labels
/// (at most 63). `<name>-<revision>` (74 at most) names the Deployments,
/// well inside their 253; pod names the ReplicaSets generate are truncated
/// by Kubernetes itself.
pub const MAX_NAME_LEN: usize = 63;

/// CEL over the root object: `metadata.name` is a DNS-1035 label.
pub const NAME_RULE: &str =
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
/// Its message.
pub const NAME_MESSAGE: &str = "metadata.name must be at most 63 characters of lower-case letters, digits and '-', starting with a letter and ending with a letter or digit (it names the Service and is a label value)";

/// CEL: every key of a map is a label key.
pub const LABEL_KEYS_RULE: &str = "self.all(k, k.size() <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && (!k.contains('/') || k.indexOf('/') <= 253))";
/// Its message.
pub const LABEL_KEYS_MESSAGE: &str = "engine.nodeSelector keys must be label keys: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
/// CEL: every value of a map is a label value.
pub const LABEL_VALUES_RULE: &str =
    "self.all(k, self[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$'))";
/// Its message.
pub const LABEL_VALUES_MESSAGE: &str = "engine.nodeSelector values must be label values: empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

/// CEL: a DNS-1123 subdomain (ConfigMap names).
pub const SUBDOMAIN_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
/// Its message for the golden set.
pub const GOLDEN_SET_MESSAGE: &str = "quality.goldenSet.configMap must be a ConfigMap name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit";

/// Its message for a Gateway parent's name.
pub const PARENT_NAME_MESSAGE: &str = "gateway.parentRefs[].name must be a Gateway name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit";
/// Its message for a Gateway parent's listener.
pub const PARENT_SECTION_MESSAGE: &str = "gateway.parentRefs[].sectionName must be a listener name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit";

/// CEL: a DNS-1123 label (namespace names).
pub const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
/// Its message for a Gateway parent's namespace.
pub const PARENT_NAMESPACE_MESSAGE: &str = "gateway.parentRefs[].namespace must be a namespace name: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit";

/// CEL: an image reference has no whitespace.
pub const IMAGE_RULE: &str = "self.matches('^[^\\\\s]+$')";
/// Its message.
pub const IMAGE_MESSAGE: &str = "engine.image must be an image reference without whitespace";

/// CEL on an int-or-string quantity: parses and is positive.
pub const QUANTITY_RULE: &str =
    "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))";
/// Its message.
pub fn quantity_message(field: &str) -> String {
    format!("engine.resources.{field} must be a positive Kubernetes quantity such as 500m, 2, 16Gi or 512Mi")
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// A DNS-1123 label: lower-case alphanumerics and '-', at most 63.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `metadata.name` as [`NAME_RULE`] says.
pub fn is_valid_name(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value (may be empty).
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && is_alnum(b[0])
            && is_alnum(b[b.len() - 1])
            && b.iter()
                .all(|&c| is_alnum(c) || c == b'-' || c == b'_' || c == b'.'))
}

/// A label key: `[prefix/]name`.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// `model.uri` as its schema rule says: `file:///path` or
/// `pvc://claim[/path]`, no whitespace.
pub fn is_model_uri(s: &str) -> bool {
    if s.len() > 1024 || s.chars().any(char::is_whitespace) {
        return false;
    }
    if let Some(path) = s.strip_prefix("file://") {
        return path.starts_with('/');
    }
    s.strip_prefix("pvc://").is_some_and(|rest| {
        let c = rest.split('/').next().unwrap_or("").as_bytes();
        !c.is_empty()
            && c.iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && c[0] != b'-'
            && c[c.len() - 1] != b'-'
    })
}

/// `model.name` as its schema rule says.
pub fn is_model_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && is_alnum(b[0])
        && b.iter()
            .all(|&c| is_alnum(c) || matches!(c, b'.' | b'_' | b':' | b'/' | b'-'))
}

/// The longest single `engine.extraArgs` entry.
pub const MAX_ARG_LEN: usize = 4096;

/// An image reference without whitespace.
pub fn is_image(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_whitespace)
}

/// A Kubernetes quantity (`resource.ParseQuantity` grammar) greater than
/// zero.
pub fn is_positive_quantity(s: &str) -> bool {
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => (1, s),
    };
    let num_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_len);
    let mut parts = num.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    if frac.is_some_and(|f| f.contains('.')) || (whole.is_empty() && frac.is_none_or(str::is_empty))
    {
        return false;
    }
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()));
    let nonzero = whole
        .bytes()
        .chain(frac.unwrap_or("").bytes())
        .any(|c| c != b'0');
    suffix_ok && sign > 0 && nonzero
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_1035_labels_of_at_most_63() {
        for ok in ["chat", "a", "chat-small-2", &"a".repeat(63)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1chat",
            "Chat",
            "chat-",
            "-chat",
            "chat.small",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "gpu",
            "nvidia.com/gpu.product",
            "a_b.c-d",
            "kubernetes.io/hostname",
        ] {
            assert!(is_label_key(ok), "{ok}");
        }
        for bad in [
            "",
            "/gpu",
            "Bad_Prefix/x",
            "a/b/c",
            "-x",
            "x-",
            &"a".repeat(64),
            "has space",
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
        for ok in ["", "A100", "h100-80gb", "a.b_c"] {
            assert!(is_label_value(ok), "{ok}");
        }
        for bad in ["-a", "a-", "a b", "ü", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }

    #[test]
    fn quantities_parse_as_kubernetes_does_and_are_positive() {
        for ok in [
            "2", "500m", "0.5", "16Gi", "512Mi", "1e3", "1E-2", "+3", ".5", "1.",
        ] {
            assert!(is_positive_quantity(ok), "{ok}");
        }
        for bad in [
            "16GB", "-2", "0", "0Gi", "", "Gi", "1.2.3", "1 Gi", "one", "1e", "0.0",
        ] {
            assert!(!is_positive_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn images_have_no_whitespace() {
        assert!(is_image("steward-engine:0.1"));
        for bad in [" steward-engine:0.1", "steward-engine:0.1\n", "a b", ""] {
            assert!(!is_image(bad), "{bad:?}");
        }
    }

    #[test]
    fn model_uris_and_names() {
        for ok in ["file:///m", "pvc://models", "pvc://models/chat/v1"] {
            assert!(is_model_uri(ok), "{ok}");
        }
        for bad in [
            "s3://b/m",
            "file://rel",
            "pvc://",
            "pvc://Models/x",
            "file:///a b",
        ] {
            assert!(!is_model_uri(bad), "{bad}");
        }
        assert!(is_model_name("org/chat-small:v1.2_x"));
        for bad in ["", "-chat", "chat small", "ü"] {
            assert!(!is_model_name(bad), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        assert!(is_dns_subdomain("chat-golden"));
        assert!(is_dns_subdomain("a.b-c"));
        for bad in ["Chat", "a..b", "a_b", ".a", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
