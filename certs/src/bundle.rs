//! Trust bundles and CA rotation.
//!
//! A CA is rolled without a flag day: the new CA is added to the bundle every node trusts
//! while certificates from the old one are still in use, and the old CA is dropped only
//! once it has expired (by which time no valid leaf can chain to it).

use rustls::pki_types::CertificateDer;

use crate::{CertificateAuthority, Duration, Error, OffsetDateTime, Result};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The set of CA certificates nodes trust: during a CA roll, old and new together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    /// One PEM block per CA, newest first, each in the form [`canonical`] gives.
    cas: Vec<String>,
}

impl TrustBundle {
    /// Parses concatenated PEM certificates. Sections other than certificates are skipped;
    /// every certificate must be valid X.509.
    pub fn from_pem(bundle_pem: &str) -> Result<Self> {
        let mut cas = Vec::new();
        let mut rest = bundle_pem;
        while let Some(start) = rest.find(BEGIN) {
            let len = rest[start..].find(END).ok_or_else(|| rustls::pki_types::pem::Error::MissingSectionEnd {
                end_marker: END.as_bytes().to_vec(),
            })?;
            let end = start + len + END.len();
            let block = canonical(&rest[start..end]);
            crate::inspect::parse(&crate::first_certificate(&block)?)?;
            cas.push(block);
            rest = &rest[end..];
        }
        if cas.is_empty() {
            return Err(Error::EmptyBundle);
        }
        Ok(Self { cas })
    }

    /// A bundle of one CA, typically [`CertificateAuthority::cert_pem`]. The PEM is not
    /// checked here, only when the bundle is used.
    pub fn single(ca_cert_pem: &str) -> Self {
        Self { cas: vec![canonical(ca_cert_pem)] }
    }

    /// The bundle as concatenated PEM, newest CA first. Deterministic: equal bundles give
    /// equal text, so it can be compared against what is stored in a ConfigMap.
    pub fn to_pem(&self) -> String {
        self.cas.concat()
    }

    /// The CAs, one PEM block each, newest first.
    pub fn blocks(&self) -> impl Iterator<Item = &str> {
        self.cas.iter().map(String::as_str)
    }

    /// Number of CAs.
    pub fn len(&self) -> usize {
        self.cas.len()
    }

    /// Whether the bundle holds no CA.
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// The bundle after a roll to `new_ca_pem`: the new CA first, then every CA of this
    /// bundle not yet expired at `now`, without duplicates.
    pub fn rolled(&self, new_ca_pem: &str, now: OffsetDateTime) -> Result<Self> {
        let new = Self::from_pem(new_ca_pem)?.cas.into_iter().next().ok_or(Error::EmptyBundle)?;
        if !crate::inspect(&new)?.is_ca {
            return Err(Error::NotCa);
        }
        let mut seen: Vec<CertificateDer<'static>> = vec![crate::first_certificate(&new)?];
        let mut cas = vec![new];
        for ca in &self.cas {
            let der = crate::first_certificate(ca)?;
            let expired = crate::inspect_der(&der)?.not_after < now;
            if !expired && !seen.contains(&der) {
                seen.push(der);
                cas.push(ca.clone());
            }
        }
        Ok(Self { cas })
    }

    /// Whether the bundle holds the (first) certificate of `ca_pem`; compared
    /// by DER bytes, so formatting differences do not matter.
    pub fn contains(&self, ca_pem: &str) -> bool {
        let Ok(wanted) = crate::first_certificate(ca_pem) else { return false };
        self.cas.iter().any(|ca| crate::first_certificate(ca).is_ok_and(|der| der == wanted))
    }

    /// The bundle without the CAs that expired before `now`. The first (current) CA is always
    /// kept, and so is any CA that cannot be parsed (it is not this function's to judge).
    pub fn pruned(&self, now: OffsetDateTime) -> Self {
        let expired = |ca: &String| crate::inspect(ca).is_ok_and(|info| info.not_after < now);
        let cas =
            self.cas.iter().enumerate().filter(|(i, ca)| *i == 0 || !expired(ca)).map(|(_, ca)| ca.clone()).collect();
        Self { cas }
    }
}

/// Outcome of checking a CA for renewal.
#[derive(Clone, Debug)]
pub enum CaRenewal {
    /// The CA is not due for renewal.
    Keep,
    /// A new CA, to be stored, and the bundle to distribute (new CA first, then the old).
    Renewed {
        /// The new CA; issue all new certificates with it.
        ca: CertificateAuthority,
        /// New and old CAs, for nodes to trust while certificates from both are in use.
        bundle: TrustBundle,
    },
}

/// If `ca` is within `renew_before` of its expiry (or past it), generates a new CA with the
/// same common name valid for `validity`, and returns it with `bundle` rolled to it; else
/// [`CaRenewal::Keep`].
///
/// `ca` is kept in the rolled bundle (while it has not expired) even if `bundle` lacks it,
/// since the leaves it issued are still in use.
pub fn renew_ca(
    ca: &CertificateAuthority,
    bundle: &TrustBundle,
    validity: Duration,
    renew_before: Duration,
    now: OffsetDateTime,
) -> Result<CaRenewal> {
    if !crate::needs_renewal(ca.cert_pem(), renew_before, now)? {
        return Ok(CaRenewal::Keep);
    }
    let new = CertificateAuthority::generate(ca.common_name(), validity, now)?;
    let current =
        TrustBundle { cas: std::iter::once(canonical(ca.cert_pem())).chain(bundle.cas.iter().cloned()).collect() };
    let bundle = current.rolled(new.cert_pem(), now)?;
    Ok(CaRenewal::Renewed { ca: new, bundle })
}

/// One PEM block with `\n` line endings, no blank lines or indentation, and a final newline.
fn canonical(pem: &str) -> String {
    pem.lines().map(str::trim).filter(|line| !line.is_empty()).flat_map(|line| [line, "\n"]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ca, issue_node, t0};
    use crate::verify_leaf;

    /// A pin check must see what any reader would trust: a block indented
    /// out of the strict reader's sight is listed, and text either reader
    /// refuses is an error rather than no certificate.
    #[test]
    fn fingerprints_see_every_certificate_however_the_text_is_made() {
        let (own, rogue) = (ca(t0()), ca(t0()));
        let own_print = crate::fingerprints(own.cert_pem()).unwrap();
        let rogue_print = crate::fingerprints(rogue.cert_pem()).unwrap();
        assert_eq!(own_print.len(), 1);
        assert_ne!(own_print, rogue_print);
        let indented: String = rogue.cert_pem().lines().map(|l| format!("  {l}\n")).collect();
        let text = format!("{}{indented}", own.cert_pem());
        let prints = crate::fingerprints(&text).unwrap();
        assert!(prints.contains(&own_print[0]) && prints.contains(&rogue_print[0]), "{prints:?}");
        assert!(TrustBundle::from_pem(&text).unwrap().len() == 2, "the planner trusts both");
        for broken in
            [format!("{}-----BEGIN x", own.cert_pem()), format!("{}-----BEGIN CERTIFICATE-----\n", own.cert_pem())]
        {
            assert!(crate::fingerprints(&broken).is_err(), "{broken}");
        }
    }

    fn roll_at(ca: &CertificateAuthority, now: OffsetDateTime) -> (CertificateAuthority, TrustBundle) {
        let bundle = TrustBundle::single(ca.cert_pem());
        match renew_ca(ca, &bundle, Duration::days(365), Duration::days(30), now).unwrap() {
            CaRenewal::Renewed { ca, bundle } => (ca, bundle),
            CaRenewal::Keep => panic!("not renewed at {now}"),
        }
    }

    #[test]
    fn pem_round_trips() {
        let (a, b) = (ca(t0()), ca(t0()));
        let text = format!("{}\r\n\n{}", a.cert_pem().replace('\n', "\r\n"), b.cert_pem());
        let bundle = TrustBundle::from_pem(&text).unwrap();
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle.to_pem(), format!("{}{}", a.cert_pem(), b.cert_pem()));
        assert_eq!(TrustBundle::from_pem(&bundle.to_pem()).unwrap(), bundle);
        assert_eq!(TrustBundle::single(a.cert_pem()), TrustBundle::from_pem(a.cert_pem()).unwrap());
    }

    #[test]
    fn from_pem_refuses_garbage() {
        assert!(matches!(TrustBundle::from_pem(""), Err(Error::EmptyBundle)));
        let a = ca(t0());
        // Keys are not certificates, and are not carried into the bundle.
        let with_key = format!("{}{}", a.key_pem().expose(), a.cert_pem());
        assert_eq!(TrustBundle::from_pem(&with_key).unwrap().to_pem(), a.cert_pem());
        let truncated = &a.cert_pem()[..a.cert_pem().len() - 10];
        assert!(matches!(TrustBundle::from_pem(truncated), Err(Error::Pem(_))));
        let not_x509 = format!("{BEGIN}\nAAAA\n{END}\n");
        assert!(matches!(TrustBundle::from_pem(&not_x509), Err(Error::X509(_))));
    }

    #[test]
    fn renew_ca_keeps_a_ca_outside_the_window() {
        let ca = ca(t0());
        let bundle = TrustBundle::single(ca.cert_pem());
        let renewal =
            renew_ca(&ca, &bundle, Duration::days(365), Duration::days(30), t0() + Duration::days(300)).unwrap();
        assert!(matches!(renewal, CaRenewal::Keep));
    }

    #[test]
    fn ca_roll() {
        let old = ca(t0()); // valid 365 days
        let old_leaf = issue_node(&old, 1, t0() + Duration::days(330));

        let now = t0() + Duration::days(340);
        let (new, bundle) = roll_at(&old, now);
        assert_eq!(inspect_cn(new.cert_pem()), inspect_cn(old.cert_pem()));
        assert_eq!(new.not_after(), now + Duration::days(365));
        assert_eq!(bundle.to_pem(), format!("{}{}", new.cert_pem(), old.cert_pem()));

        // Both generations verify against the rolled bundle, though the CAs share a name;
        // neither verifies against the other CA alone.
        let new_leaf = issue_node(&new, 2, now);
        for leaf in [&old_leaf, &new_leaf] {
            verify_leaf(&leaf.cert_pem, &bundle.to_pem(), now).unwrap();
        }
        assert!(verify_leaf(&old_leaf.cert_pem, new.cert_pem(), now).is_err());
        assert!(verify_leaf(&new_leaf.cert_pem, old.cert_pem(), now).is_err());

        // Before the old CA expires pruning keeps it; after, it goes.
        assert_eq!(bundle.pruned(old.not_after()), bundle);
        let later = old.not_after() + Duration::seconds(1);
        let pruned = bundle.pruned(later);
        assert_eq!(pruned, TrustBundle::single(new.cert_pem()));
        verify_leaf(&issue_node(&new, 2, later).cert_pem, &pruned.to_pem(), later).unwrap();

        // Rolling again later drops the expired CA too, and never duplicates.
        let again = bundle.rolled(new.cert_pem(), later).unwrap();
        assert_eq!(again, pruned);
    }

    #[test]
    fn renew_ca_keeps_the_current_ca_missing_from_the_bundle() {
        let old = ca(t0());
        let unrelated = TrustBundle::single(ca(t0()).cert_pem());
        let now = t0() + Duration::days(340);
        let CaRenewal::Renewed { ca: new, bundle } =
            renew_ca(&old, &unrelated, Duration::days(365), Duration::days(30), now).unwrap()
        else {
            panic!("not renewed");
        };
        let expected = [new.cert_pem(), old.cert_pem()].concat() + &unrelated.to_pem();
        assert_eq!(bundle.to_pem(), expected);
    }

    #[test]
    fn pruned_never_drops_the_current_ca() {
        let a = ca(t0());
        let long_after = a.not_after() + Duration::days(1000);
        assert_eq!(TrustBundle::single(a.cert_pem()).pruned(long_after).len(), 1);
    }

    #[test]
    fn rolled_refuses_a_leaf_as_ca() {
        let a = ca(t0());
        let leaf = issue_node(&a, 0, t0());
        let bundle = TrustBundle::single(a.cert_pem());
        assert!(matches!(bundle.rolled(&leaf.cert_pem, t0()), Err(Error::NotCa)));
    }

    fn inspect_cn(pem: &str) -> String {
        crate::inspect(pem).unwrap().subject
    }
}
