//! The X25519 keys with which nodes seal what they send through the HTTP
//! relay: a node holds a 32-byte seed (`seal.key`), the operator publishes
//! the public key of each in the cluster configuration
//! ([`crate::PeerConfig::seal_key`]), and both compute it the same way.

use curve25519_dalek::MontgomeryPoint;

/// The X25519 public key of seal seed `seed` (clamped as RFC 7748 says).
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*seed).to_bytes()
}

#[cfg(test)]
mod tests {
    /// RFC 7748, section 6.1: Alice's private and public key.
    #[test]
    fn matches_rfc_7748() {
        let mut seed = [0; 32];
        hex::decode_to_slice("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", &mut seed).unwrap();
        assert_eq!(
            hex::encode(super::public_key(&seed)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
