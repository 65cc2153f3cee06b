//! TEST ONLY (the `test-hooks` feature): ways for an end-to-end test to make
//! the operator misbehave, so that the nodes' own checks are seen to hold
//! against an issuer that is wrong. `Dockerfile.operator` builds without
//! this module.

use ed25519_dalek::SigningKey;
use torcus_contract::{Grant, SignedGrant};

/// What a test may change in the operator's behaviour.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestHooks {
    /// Changes a signing grant after the operator built and checked it,
    /// then signs the changed grant: a stand-in for an issuer with a bug
    /// (the grant verifies under the cluster's grant key).
    pub tamper_sign_grant: Option<fn(&mut Grant)>,
}

impl TestHooks {
    /// `grant`, changed and signed again with `key` if a hook says so.
    pub fn tamper(&self, grant: SignedGrant, key: &SigningKey) -> SignedGrant {
        match self.tamper_sign_grant {
            Some(tamper) => {
                let mut changed = grant.grant;
                tamper(&mut changed);
                torcus_contract::sign(changed, key)
            }
            None => grant,
        }
    }
}
