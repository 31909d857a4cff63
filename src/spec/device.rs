//! Where models run, as configured (`model.device`) or declared by a manifest (`device`).

use serde::{Deserialize, Serialize};

/// Where models run: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceKind {
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
    /// CUDA GPU 0 when built with the `cuda` feature and a GPU is present, else CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "auto" => Ok(DeviceKind::Auto),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceKind::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: expected cpu, cuda, cuda:N or auto")),
        }
    }
}

impl TryFrom<String> for DeviceKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceKind::Auto => f.write_str("auto"),
        }
    }
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> String {
        d.to_string()
    }
}
