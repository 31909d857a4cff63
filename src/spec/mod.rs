//! What a model version is, on disk: the manifest (`anya.yaml`, files with their sha256, task,
//! parameters, device), its ed25519 signature, and the repository layout
//! (`models/<id>/<version>/`). A leaf: it imports nothing else of anya's, so the registry, the
//! engine, the models and the config all read it without circles.

pub mod device;
pub mod manifest;
pub mod repository;
pub mod signing;
