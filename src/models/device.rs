//! Device choice: `cpu`, `cuda` / `cuda:N`, or `auto` (CUDA GPU 0 when built with the `cuda`
//! feature and a GPU is present, else CPU, saying so). Everything else in the crate is
//! device-agnostic.

use candle_core::Device;

use crate::config::DeviceKind;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {0} requested, but anya was built without the `cuda` feature (scripts/build-cuda.sh, or cargo build --release --features cuda)")]
    CudaNotBuilt(DeviceKind),
    #[error("device {kind}: no usable CUDA GPU ({reason})")]
    Cuda { kind: DeviceKind, reason: String },
}

/// Whether this build has CUDA and GPU 0 can be opened (a driver that reports a GPU).
/// (`candle_core::utils::cuda_is_available` only says whether the feature was built.)
pub fn cuda_available() -> bool {
    cfg!(feature = "cuda") && Device::new_cuda(0).is_ok()
}

pub fn select(kind: DeviceKind) -> Result<Device, DeviceError> {
    let cuda = |ordinal: usize| {
        Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda {
            kind,
            reason: e.to_string(),
        })
    };
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::CudaNotBuilt(kind)),
        DeviceKind::Cuda(ordinal) => cuda(ordinal),
        DeviceKind::Auto if !cfg!(feature = "cuda") => Ok(Device::Cpu),
        DeviceKind::Auto => match cuda(0) {
            Ok(device) => Ok(device),
            Err(e) => {
                tracing::warn!(
                    "device auto: built with CUDA, but no GPU was found ({e}); running on the CPU"
                );
                Ok(Device::Cpu)
            }
        },
    }
}

/// The device's name as `/models/{id}` and the metrics show it: `cpu`, `cuda:N`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_work_everywhere() {
        assert!(select(DeviceKind::Cpu).unwrap().is_cpu());
        assert_eq!(describe(&Device::Cpu), "cpu");
        if !cuda_available() {
            assert!(select(DeviceKind::Auto).unwrap().is_cpu());
        }
        #[cfg(not(feature = "cuda"))]
        {
            let err = select(DeviceKind::Cuda(1)).unwrap_err();
            assert!(matches!(
                err,
                DeviceError::CudaNotBuilt(DeviceKind::Cuda(1))
            ));
            assert!(err.to_string().contains("cuda:1"), "{err}");
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_gpu_says_so() {
        if cuda_available() {
            eprintln!("SKIPPED: a GPU is present; this test checks the message without one");
            return;
        }
        let err = select(DeviceKind::Cuda(0)).unwrap_err();
        assert!(err.to_string().contains("no usable CUDA GPU"), "{err}");
    }
}
