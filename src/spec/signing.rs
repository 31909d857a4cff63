//! Signed manifests: an ed25519 signature over the manifest (which lists every file's sha256),
//! so with `security.require_signed_models` a model version loads only if a trusted key vouches
//! for every byte of it.
//!
//! The signed bytes are the manifest rendered by anya itself with the `signature` field left
//! out, so formatting or comments in the file on disk do not matter, but every value does.

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::manifest::Manifest;
pub use super::manifest::ManifestSignature;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignatureError {
    #[error("the manifest is not signed")]
    Unsigned,
    #[error("the manifest is signed by a key that is not in security.trusted_keys")]
    UntrustedKey,
    #[error("the manifest's signature does not match its content")]
    BadSignature,
}

fn decode_32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(s).ok()?
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()?
    };
    bytes.try_into().ok()
}

pub fn parse_public_key(s: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&decode_32(s)?).ok()
}

/// A private key file: the 32-byte seed in hex or base64.
pub fn parse_signing_key(s: &str) -> Option<SigningKey> {
    Some(SigningKey::from_bytes(&decode_32(s)?))
}

pub fn encode_public_key(k: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(k.as_bytes())
}

/// The bytes a signature covers.
pub fn canonical_bytes(m: &Manifest) -> Vec<u8> {
    let mut unsigned = m.clone();
    unsigned.signature = None;
    unsigned.to_yaml().into_bytes()
}

pub fn sign(m: &mut Manifest, key: &SigningKey) {
    let sig = key.sign(&canonical_bytes(m));
    m.signature = Some(ManifestSignature {
        public_key: encode_public_key(&key.verifying_key()),
        value: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    });
}

pub fn verify(m: &Manifest, trusted: &[VerifyingKey]) -> Result<(), SignatureError> {
    let sig = m.signature.as_ref().ok_or(SignatureError::Unsigned)?;
    let key = parse_public_key(&sig.public_key).ok_or(SignatureError::UntrustedKey)?;
    if !trusted.contains(&key) {
        return Err(SignatureError::UntrustedKey);
    }
    let bytes: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(&sig.value)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::BadSignature)?;
    key.verify(&canonical_bytes(m), &Signature::from_bytes(&bytes))
        .map_err(|_| SignatureError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::echo("m", semver::Version::new(1, 0, 0))
    }

    #[test]
    fn sign_verify_tamper() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let mut m = manifest();
        assert_eq!(
            verify(&m, &[key.verifying_key()]),
            Err(SignatureError::Unsigned)
        );
        sign(&mut m, &key);
        assert_eq!(verify(&m, &[key.verifying_key()]), Ok(()));
        assert_eq!(
            verify(&m, &[other.verifying_key()]),
            Err(SignatureError::UntrustedKey)
        );
        let mut tampered = m.clone();
        tampered.max_inputs = 5;
        assert_eq!(
            verify(&tampered, &[key.verifying_key()]),
            Err(SignatureError::BadSignature)
        );
        // the signature survives a round trip through the file format
        let back: Manifest = serde_yaml::from_str(&m.to_yaml()).unwrap();
        assert_eq!(verify(&back, &[key.verifying_key()]), Ok(()));
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let b64 = encode_public_key(&key.verifying_key());
        let hexed = hex::encode(key.verifying_key().as_bytes());
        assert_eq!(parse_public_key(&b64), Some(key.verifying_key()));
        assert_eq!(parse_public_key(&hexed), Some(key.verifying_key()));
        assert!(parse_public_key("short").is_none());
        assert!(parse_signing_key(&hex::encode([3u8; 32])).is_some());
    }
}
