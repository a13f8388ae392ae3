use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("stored credentials were sealed with master key version {0}, which is not configured")]
    UnknownKeyVersion(i16),
    #[error("stored credentials do not open with the configured master key (wrong key, or the row was tampered with)")]
    Corrupt,
}

/// A sealed secret as stored: the key version and `nonce ‖ ciphertext ‖ tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_version: i16,
    pub bytes: Vec<u8>,
}

/// Seals and opens stored credentials with AES-256-GCM.
///
/// The associated data binds a sealed value to its row (for example `tenant:<id>`), so
/// a value copied into another row does not open. New values use the current key;
/// older versions stay configured to open what they sealed until it is re-sealed.
#[derive(Clone)]
pub struct Sealer {
    current: i16,
    keys: BTreeMap<i16, Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.current)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Sealer {
    /// A sealer whose current key is `key` at `version`.
    pub fn new(version: i16, key: &[u8; 32]) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(version, Aes256Gcm::new(key.into()));
        Self {
            current: version,
            keys,
        }
    }

    /// Adds an older key, to open values sealed before a rotation.
    pub fn with_previous(mut self, version: i16, key: &[u8; 32]) -> Self {
        self.keys.insert(version, Aes256Gcm::new(key.into()));
        self
    }

    pub fn seal(&self, plaintext: &[u8], bound_to: &str) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let cipher = &self.keys[&self.current];
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: bound_to.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_version: self.current,
            bytes,
        }
    }

    pub fn open(&self, sealed: &Sealed, bound_to: &str) -> Result<Vec<u8>, SealError> {
        let cipher = self
            .keys
            .get(&sealed.key_version)
            .ok_or(SealError::UnknownKeyVersion(sealed.key_version))?;
        if sealed.bytes.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, ciphertext) = sealed.bytes.split_at(NONCE_LEN);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: bound_to.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let sealer = Sealer::new(1, &[7; 32]);
        let sealed = sealer.seal(b"s3cret", "tenant:a");
        assert!(!sealed.bytes.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(sealer.open(&sealed, "tenant:a").unwrap(), b"s3cret");
        // Bound to its row.
        assert!(matches!(
            sealer.open(&sealed, "tenant:b"),
            Err(SealError::Corrupt)
        ));
        // Tamper-evident.
        let mut bad = sealed.clone();
        let last = bad.bytes.len() - 1;
        bad.bytes[last] ^= 1;
        assert!(matches!(
            sealer.open(&bad, "tenant:a"),
            Err(SealError::Corrupt)
        ));
        // Two seals of one value differ (fresh nonce).
        assert_ne!(sealer.seal(b"s3cret", "tenant:a").bytes, sealed.bytes);
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = Sealer::new(1, &[1; 32]);
        let sealed = old.seal(b"pw", "server:local");
        let new = Sealer::new(2, &[2; 32]).with_previous(1, &[1; 32]);
        assert_eq!(new.open(&sealed, "server:local").unwrap(), b"pw");
        assert_eq!(new.seal(b"pw", "server:local").key_version, 2);
        let without_old = Sealer::new(2, &[2; 32]);
        assert!(matches!(
            without_old.open(&sealed, "server:local"),
            Err(SealError::UnknownKeyVersion(1))
        ));
        assert!(matches!(
            new.open(
                &Sealed {
                    key_version: 1,
                    bytes: vec![1, 2]
                },
                "x"
            ),
            Err(SealError::Corrupt)
        ));
    }
}
