//! The image map: which local executable stands in for a container image.
//!
//! A YAML file of `image: /path/to/executable` pairs. A lookup tries the
//! exact image, then the image without its tag or digest, so
//! `steward-engine:0.1` and `steward-engine` may share one line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why an image could not become a process; mirrors kubelet waiting reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// No line in the map: the kubelet would fail to pull it.
    #[error(
        "image {image:?} is not in the image map {map}; add a line `{image}: /path/to/executable`"
    )]
    NotMapped { image: String, map: String },
    /// The mapped path is missing or not executable.
    #[error("image {image:?} maps to {path}, which {why}")]
    NotExecutable {
        image: String,
        path: String,
        why: String,
    },
}

impl ImageError {
    /// The container waiting reason a kubelet would report.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::NotMapped { .. } => "ErrImagePull",
            ImageError::NotExecutable { .. } => "CreateContainerError",
        }
    }
}

/// Parsed image map.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    source: String,
    entries: BTreeMap<String, PathBuf>,
}

impl ImageMap {
    /// Reads the map from a YAML file.
    pub fn load(path: &Path) -> anyhow::Result<ImageMap> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading image map {}: {e}", path.display()))?;
        let entries: BTreeMap<String, PathBuf> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_yaml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "image map {} is not a YAML map of image: path: {e}",
                    path.display()
                )
            })?
        };
        Ok(ImageMap {
            source: path.display().to_string(),
            entries,
        })
    }

    /// Builds a map in memory.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, PathBuf)>) -> ImageMap {
        ImageMap {
            source: "<memory>".into(),
            entries: entries.into_iter().collect(),
        }
    }

    /// The executable for `image`, checked to exist and be executable.
    pub fn resolve(&self, image: &str) -> Result<PathBuf, ImageError> {
        let path = self
            .entries
            .get(image)
            .or_else(|| self.entries.get(strip_tag(image)))
            .ok_or_else(|| ImageError::NotMapped {
                image: image.to_string(),
                map: self.source.clone(),
            })?;
        use std::os::unix::fs::PermissionsExt;
        let why = match std::fs::metadata(path) {
            Err(e) => Some(format!("cannot be read: {e}")),
            Ok(m) if !m.is_file() => Some("is not a file".to_string()),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("is not executable".to_string()),
            Ok(_) => None,
        };
        match why {
            Some(why) => Err(ImageError::NotExecutable {
                image: image.to_string(),
                path: path.display().to_string(),
                why,
            }),
            None => Ok(path.clone()),
        }
    }
}

fn strip_tag(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' is a tag; one before it is a registry port.
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_tag_keeps_registry_ports() {
        assert_eq!(strip_tag("steward-engine:0.1"), "steward-engine");
        assert_eq!(
            strip_tag("reg:5000/steward-engine"),
            "reg:5000/steward-engine"
        );
        assert_eq!(strip_tag("reg:5000/e:1@sha256:ab"), "reg:5000/e");
    }

    #[test]
    fn unmapped_image_is_err_image_pull() {
        let m = ImageMap::from_entries([("a".to_string(), PathBuf::from("/bin/sh"))]);
        let e = m.resolve("nope:1").unwrap_err();
        assert_eq!(e.reason(), "ErrImagePull");
        assert!(e.to_string().contains("nope:1"));
    }

    #[test]
    fn missing_executable_is_create_container_error() {
        let m = ImageMap::from_entries([("a".to_string(), PathBuf::from("/no/such/bin"))]);
        assert_eq!(
            m.resolve("a:2").unwrap_err().reason(),
            "CreateContainerError"
        );
        let m = ImageMap::from_entries([("a".to_string(), PathBuf::from("/bin/sh"))]);
        assert_eq!(m.resolve("a:2").expect("mapped"), PathBuf::from("/bin/sh"));
    }
}
