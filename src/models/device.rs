//! Device choice: `cpu`, `cuda`, or `auto` (CUDA when built with the `cuda` feature and a GPU is
//! present, else CPU). Everything else in the crate is device-agnostic.

use candle_core::Device;

use crate::config::DeviceKind;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device cuda requested, but anya was built without the `cuda` feature (cargo build --release --features cuda)")]
    CudaNotBuilt,
    #[error("device cuda: {0}")]
    Cuda(String),
}

pub fn select(kind: DeviceKind) -> Result<Device, DeviceError> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => {
            if !cfg!(feature = "cuda") {
                return Err(DeviceError::CudaNotBuilt);
            }
            Device::new_cuda(0).map_err(|e| DeviceError::Cuda(e.to_string()))
        }
        DeviceKind::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(|e| DeviceError::Cuda(e.to_string()))
            } else {
                Ok(Device::Cpu)
            }
        }
    }
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda:0".into(),
        Device::Metal(_) => "metal".into(),
        #[allow(unreachable_patterns)]
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_work_everywhere() {
        assert!(select(DeviceKind::Cpu).unwrap().is_cpu());
        #[cfg(not(feature = "cuda"))]
        {
            assert!(select(DeviceKind::Auto).unwrap().is_cpu());
            assert!(matches!(
                select(DeviceKind::Cuda),
                Err(DeviceError::CudaNotBuilt)
            ));
        }
    }
}
