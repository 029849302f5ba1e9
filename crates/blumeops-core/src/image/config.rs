//! The image config document, with deterministic serialization: every map is a `BTreeMap`
//! and fields are written in a fixed order, so the same image gives the same bytes.
//! (oci-spec's config keeps labels in a `HashMap`, whose order varies between runs.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

/// An OCI image config (also reads Docker's, which has the same shape plus extra fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Runtime defaults.
    #[serde(default, skip_serializing_if = "RuntimeConfig::is_empty")]
    pub config: RuntimeConfig,
    /// Layer diff ids.
    pub rootfs: RootFs,
    /// Build history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// `rootfs` of a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each uncompressed layer, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

/// An empty JSON object, as used for the values of `ExposedPorts` and `Volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The `config` section: what a runtime uses to start the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// User (name or uid, optionally `:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports, e.g. `4533/tcp`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// `NAME=value` entries.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub env: Vec<String>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volumes.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub volumes: BTreeMap<String, Empty>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub labels: BTreeMap<String, String>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Fields this crate does not model (Healthcheck, Shell, ArgsEscaped, ...), kept as they
    /// were, in sorted order.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl RuntimeConfig {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Set `name=value` in `Env`, replacing an earlier value of `name`.
    pub fn set_env(&mut self, name: &str, value: &str) {
        let entry = format!("{name}={value}");
        let prefix = format!("{name}=");
        match self
            .env
            .iter_mut()
            .find(|e| e.starts_with(&prefix) || *e == name)
        {
            Some(e) => *e = entry,
            None => self.env.push(entry),
        }
    }

    /// The value of `name` in `Env`.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.env.iter().find_map(|e| e.strip_prefix(&prefix))
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// What made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step added no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_with_nulls_and_extras() {
        let json = r#"{"architecture":"amd64","os":"linux","docker_version":"20.10",
            "config":{"Env":["PATH=/bin"],"Cmd":["sh"],"Entrypoint":null,"Labels":null,"ArgsEscaped":true},
            "rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},
            "history":[{"created":"2024-01-01T00:00:00Z","created_by":"ADD file","empty_layer":false}]}"#;
        let c: ImageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.config.env, ["PATH=/bin"]);
        assert_eq!(c.config.entrypoint, None);
        assert!(c.config.labels.is_empty());
        assert_eq!(
            c.config.other.get("ArgsEscaped"),
            Some(&serde_json::Value::Bool(true))
        );
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }

    #[test]
    fn serializes_maps_in_sorted_order() {
        let mut c = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        for k in ["z", "a", "m"] {
            c.config.labels.insert(k.into(), k.into());
        }
        c.config.exposed_ports.insert("4533/tcp".into(), Empty {});
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(
            s,
            r#"{"architecture":"amd64","os":"linux","config":{"ExposedPorts":{"4533/tcp":{}},"Labels":{"a":"a","m":"m","z":"z"}},"rootfs":{"type":"layers","diff_ids":[]}}"#
        );
    }

    #[test]
    fn set_env_replaces() {
        let mut r = RuntimeConfig::default();
        r.set_env("PATH", "/bin");
        r.set_env("FOO", "1");
        r.set_env("PATH", "/usr/bin:/bin");
        assert_eq!(r.env, ["PATH=/usr/bin:/bin", "FOO=1"]);
        assert_eq!(r.env_value("FOO"), Some("1"));
    }
}
