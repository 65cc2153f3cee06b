//! The signing policy engine: decides whether a SigningRequest may be granted
//! under its cluster's [`PolicySpec`].
//!
//! Pure logic, no API calls and no clock: the caller passes the request with
//! the time of the decision, and a per-cluster [`Ledger`] of earlier approvals
//! from which the rate and spend counters are derived. After an operator
//! restart the ledger is rebuilt from its durable copy, a ConfigMap
//! ([`crate::ledger`], [`Ledger::record_stored`]), and from the
//! SigningRequests' `status.approvedAt` ([`Approval::from_signing_request`]),
//! so the counters live in the API, not only in memory, and deleting
//! approved requests does not reset them.
//!
//! A malformed policy (bad period, time or selector) denies every request
//! with [`Rule::InvalidPolicy`], naming the field; nothing here panics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use torcus_crds::{PolicySpec, RateLimit, RateLimitScope, SigningRequest, SpendLimit};

/// A request to decide on.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `metadata.uid` of the SigningRequest; the ledger counts each uid once.
    pub uid: &'a str,
    /// Namespace of the SigningRequest.
    pub namespace: &'a str,
    /// Namespace of the MpcCluster it asks to sign with.
    pub cluster_namespace: &'a str,
    /// The request's `spec.labels`, which selectors and spend limits read.
    pub labels: &'a BTreeMap<String, String>,
    /// Decoded payload length in bytes; `None` for a digest.
    pub payload_bytes: Option<usize>,
    /// When the decision is made; the approval time if it is admitted.
    pub at: SystemTime,
}

/// An earlier approval, as recorded in the ledger.
#[derive(Clone, Copy, Debug)]
pub struct Approval<'a> {
    /// `metadata.uid` of the approved SigningRequest.
    pub uid: &'a str,
    /// Namespace of the approved SigningRequest.
    pub namespace: &'a str,
    /// Its `spec.labels`; those holding non-negative integers are amounts.
    pub labels: &'a BTreeMap<String, String>,
    /// Its `status.approvedAt`.
    pub approved_at: SystemTime,
}

impl<'a> Approval<'a> {
    /// The approval recorded on a SigningRequest, or `None` when it has none:
    /// never approved, or `approvedAt`, uid or namespace missing or unreadable.
    pub fn from_signing_request(request: &'a SigningRequest) -> Option<Self> {
        let approved_at = parse_rfc3339(request.status.as_ref()?.approved_at.as_deref()?)?;
        // Whoever may write statuses may write any time here: never before
        // the request existed (which would drop it from the limits' windows
        // early) nor after now (which would keep it in them for ever).
        let created = request.metadata.creation_timestamp.as_ref().and_then(|t| parse_rfc3339(&t.0.to_string()));
        let approved_at = approved_at.max(created.unwrap_or(approved_at)).min(SystemTime::now());
        Some(Self {
            uid: request.metadata.uid.as_deref()?,
            namespace: request.metadata.namespace.as_deref()?,
            labels: &request.spec.labels,
            approved_at,
        })
    }
}

impl<'a> From<&Request<'a>> for Approval<'a> {
    fn from(request: &Request<'a>) -> Self {
        Self { uid: request.uid, namespace: request.namespace, labels: request.labels, approved_at: request.at }
    }
}

/// Why a request was denied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    /// The rule that denied it.
    pub rule: Rule,
    /// What a person needs to know, such as which limit was reached.
    pub message: String,
}

/// The policy rule behind a [`Denial`], in evaluation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The namespace is in `deniedNamespaces`.
    DeniedNamespace,
    /// `allowedNamespaces` is set and does not hold the namespace.
    AllowedNamespaces,
    /// The labels match `deniedSelector`.
    DeniedSelector,
    /// The labels do not match `allowedSelector`.
    AllowedSelector,
    /// The payload is larger than `maxPayloadBytes`.
    MaxPayloadSize,
    /// The time is outside every `timeWindows` entry.
    TimeWindow,
    /// A `rateLimits` entry is used up.
    RateLimit,
    /// A `spendLimits` entry would be exceeded, or the amount label is missing or malformed.
    SpendLimit,
    /// The policy itself cannot be evaluated.
    InvalidPolicy,
}

impl Rule {
    /// Every rule, in the order of the policy's checks (a new rule goes here
    /// too: metrics start its series from this list).
    pub const ALL: [Rule; 9] = [
        Self::DeniedNamespace,
        Self::AllowedNamespaces,
        Self::DeniedSelector,
        Self::AllowedSelector,
        Self::MaxPayloadSize,
        Self::TimeWindow,
        Self::RateLimit,
        Self::SpendLimit,
        Self::InvalidPolicy,
    ];

    /// Low-cardinality name, for metrics, Events and conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeniedNamespace => "denied-namespace",
            Self::AllowedNamespaces => "allowed-namespaces",
            Self::DeniedSelector => "denied-selector",
            Self::AllowedSelector => "allowed-selector",
            Self::MaxPayloadSize => "max-payload-size",
            Self::TimeWindow => "time-window",
            Self::RateLimit => "rate-limit",
            Self::SpendLimit => "spend-limit",
            Self::InvalidPolicy => "invalid-policy",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most approvals a cluster's ledger holds within its policy's longest
/// limit period. Its durable copy is a ConfigMap, at most 1 MiB, and a stored
/// approval takes up to about 300 bytes; past this, requests are denied
/// ([`Rule::RateLimit`]) rather than approved without a durable count.
pub const LEDGER_CAPACITY: usize = 3_000;

/// Longest label value a label-scoped rate limit counts (a Kubernetes
/// label value's limit).
pub const MAX_COUNTED_LABEL: usize = 63;

/// Decides `request` under `policy`, with counters taken from `ledger`.
///
/// Rules are checked in the order of [`Rule`]; the first that fails denies.
/// Rate limits count approvals in `(at - period, at]`, spend limits sum the
/// amount label over the same window. The request's own uid is never counted
/// against it, so asking again about an admitted request gives the same answer.
pub fn evaluate(policy: &PolicySpec, ledger: &Ledger, request: &Request<'_>) -> Result<(), Denial> {
    let compiled = Compiled::new(policy)?;
    let Request { uid, namespace, cluster_namespace, labels, payload_bytes, at } = *request;

    if policy.denied_namespaces.iter().any(|denied| denied == namespace) {
        return deny(Rule::DeniedNamespace, format!("namespace {namespace} is denied by the cluster's signing policy"));
    }
    match &policy.allowed_namespaces {
        Some(allowed) if !allowed.iter().any(|ns| ns == namespace) => {
            let list = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            return deny(
                Rule::AllowedNamespaces,
                format!("namespace {namespace} is not among the allowed namespaces ({list})"),
            );
        }
        // Another namespace must be named: by default a cluster signs only
        // for its own.
        None if namespace != cluster_namespace => {
            return deny(
                Rule::AllowedNamespaces,
                format!(
                    "requests from namespace {namespace} need the policy of a cluster in namespace {cluster_namespace} to list it in allowedNamespaces"
                ),
            );
        }
        _ => {}
    }
    if let Some(selector) = &compiled.denied_selector
        && selector.matches(labels)
    {
        return deny(Rule::DeniedSelector, format!("the request's labels match the denied selector {selector}"));
    }
    if let Some(selector) = &compiled.allowed_selector
        && !selector.matches(labels)
    {
        return deny(
            Rule::AllowedSelector,
            format!("the request's labels do not match the allowed selector {selector}"),
        );
    }
    if let (Some(max), Some(len)) = (policy.max_payload_bytes, payload_bytes)
        && u64::try_from(len).unwrap_or(u64::MAX) > u64::from(max)
    {
        return deny(Rule::MaxPayloadSize, format!("payload of {len} bytes exceeds the limit of {max} bytes"));
    }
    if !compiled.windows.is_empty() {
        let now = minute_of_day(at);
        if !compiled.windows.iter().any(|window| window.contains(now)) {
            let list: Vec<String> = compiled.windows.iter().map(Window::to_string).collect();
            return deny(
                Rule::TimeWindow,
                format!("{} UTC is outside the signing windows {} UTC", hh_mm(now), list.join(", ")),
            );
        }
    }
    if let Some(longest) = longest_period(policy) {
        let held = ledger.granted(longest, at, uid).count();
        if held >= LEDGER_CAPACITY {
            return deny(
                Rule::RateLimit,
                format!(
                    "{held} requests were approved within the policy's longest limit period ({}s), the most the operator records per cluster ({LEDGER_CAPACITY}); shorten the period or wait",
                    longest.as_secs()
                ),
            );
        }
    }
    for &(limit, period) in &compiled.rate_limits {
        // With scope label, the label and this request's value of it.
        let counted_by = match (limit.scope, limit.label.as_deref()) {
            (RateLimitScope::Label, Some(key)) => match labels.get(key) {
                // Bounded like a Kubernetes label value: the ledger stores it.
                Some(value) if value.len() > MAX_COUNTED_LABEL => {
                    return deny(
                        Rule::RateLimit,
                        format!(
                            "label {key} is {} bytes long; a rate limit counts values of at most {MAX_COUNTED_LABEL}",
                            value.len()
                        ),
                    );
                }
                Some(value) => Some((key, value)),
                None => {
                    return deny(
                        Rule::RateLimit,
                        format!("a rate limit counts requests per label {key}, which the request is missing"),
                    );
                }
            },
            _ => None,
        };
        let granted: Vec<SystemTime> = ledger
            .granted(period, at, uid)
            .filter(|(_, entry)| match (limit.scope, counted_by) {
                (RateLimitScope::Cluster, _) => true,
                (RateLimitScope::Namespace, _) => entry.namespace == namespace,
                (RateLimitScope::Label, Some((key, value))) => entry.labels.get(key) == Some(value),
                (RateLimitScope::Label, None) => false,
            })
            .map(|(approved_at, _)| approved_at)
            .collect();
        let allowed = usize::try_from(limit.requests).unwrap_or(usize::MAX);
        if granted.len() >= allowed {
            let scope = match (limit.scope, counted_by) {
                (RateLimitScope::Cluster, _) => "in the cluster".to_owned(),
                (RateLimitScope::Namespace, _) => format!("in namespace {namespace}"),
                (RateLimitScope::Label, Some((key, value))) => format!("for {key}={value}"),
                (RateLimitScope::Label, None) => String::new(),
            };
            // The count drops below the limit once the oldest `len - allowed + 1`
            // approvals have left the window; `allowed >= 1` (see `Compiled::new`).
            let since = granted.first().map_or_else(String::new, |&t| format!(" since {}", timestamp(t)));
            let next = granted
                .get(granted.len() - allowed)
                .and_then(|&t| t.checked_add(period))
                .map_or_else(String::new, |t| format!(", next possible at {}", timestamp(t)));
            return deny(
                Rule::RateLimit,
                format!(
                    "rate limit of {} requests per {} {scope} reached ({} granted{since}{next})",
                    limit.requests,
                    limit.period,
                    granted.len()
                ),
            );
        }
    }
    for &(limit, period) in &compiled.spend_limits {
        let label = &limit.amount_label;
        let Some(raw) = labels.get(label) else {
            return deny(
                Rule::SpendLimit,
                format!("a spend limit applies to label {label}, which the request is missing"),
            );
        };
        let Some(amount) = parse_amount(raw) else {
            // The value is the requester's: quoted only when short.
            let shown = if raw.len() <= 32 { format!("{raw:?}") } else { format!("{} bytes long", raw.len()) };
            return deny(
                Rule::SpendLimit,
                format!("label {label} is {shown}, not a non-negative integer amount of at most 20 digits"),
            );
        };
        let spent: u128 = ledger
            .granted(period, at, uid)
            .filter_map(|(_, entry)| parse_amount(entry.labels.get(label)?))
            .map(u128::from)
            .sum();
        if spent + u128::from(amount) > u128::from(limit.limit) {
            return deny(
                Rule::SpendLimit,
                format!(
                    "spend limit of {} {label} per {} would be exceeded ({spent} granted in the last {}, this request asks {amount})",
                    limit.limit, limit.period, limit.period
                ),
            );
        }
    }
    Ok(())
}

/// The longest rate or spend limit period of `policy`: approvals older than
/// this no longer count, so `ledger.forget_before(now - period)` loses nothing.
/// `None` when the policy has no (valid) limits.
pub fn longest_period(policy: &PolicySpec) -> Option<Duration> {
    let rate = policy.rate_limits.iter().map(|limit| &limit.period);
    let spend = policy.spend_limits.iter().map(|limit| &limit.period);
    rate.chain(spend).filter_map(|period| parse_period(period).ok()).max()
}

/// Why a period such as `1h30m` could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// Not a sequence of numbers each followed by `h`, `m` or `s`.
    #[error("expected numbers with units h, m or s, such as 1h30m")]
    Syntax,
    /// The period adds up to zero.
    #[error("the period must be longer than zero")]
    Zero,
    /// The period does not fit in 64-bit seconds.
    #[error("the period is too long")]
    Overflow,
}

/// Parses a period such as `45s`, `1m`, `24h` or `1h30m` (parts are summed).
pub fn parse_period(period: &str) -> Result<Duration, PeriodError> {
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in period.chars() {
        if let Some(digit) = c.to_digit(10) {
            let value = number.unwrap_or(0).checked_mul(10).and_then(|n| n.checked_add(u64::from(digit)));
            number = Some(value.ok_or(PeriodError::Overflow)?);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(PeriodError::Syntax),
        };
        let value = number.take().ok_or(PeriodError::Syntax)?;
        total = value.checked_mul(unit).and_then(|secs| total.checked_add(secs)).ok_or(PeriodError::Overflow)?;
    }
    if period.is_empty() || number.is_some() {
        Err(PeriodError::Syntax)
    } else if total == 0 {
        Err(PeriodError::Zero)
    } else {
        Ok(Duration::from_secs(total))
    }
}

/// One cluster's approvals, from which rate and spend counters are derived.
///
/// Keyed by uid: recording the same request twice counts it once. The
/// caller keeps one ledger per cluster behind a lock and decides with
/// [`Ledger::admit`], so two concurrent requests cannot both take the last slot.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Approval time of each recorded uid, to find its entry and to record once.
    uids: HashMap<String, SystemTime>,
    /// Entries ordered by approval time, so a window is a range.
    entries: BTreeMap<(SystemTime, String), Entry>,
    /// Uids forgotten here that the durable copy may still hold, until
    /// [`Ledger::synced`] says they are gone there too.
    expired: std::collections::BTreeSet<String>,
    /// Uids the operator approved itself: by [`Ledger::admit`] or in the
    /// durable ledger it wrote. The others ([`Ledger::record`], read from a
    /// status that anyone allowed to write statuses could have set) count
    /// towards limits, but never stand for an approval.
    approved: HashSet<String>,
}

/// An approval as the durable ledger stores it, under the request's uid.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredApproval {
    /// Approval time, milliseconds since the Unix epoch.
    at_ms: u64,
    namespace: String,
    /// The labels the policy's limits read.
    labels: BTreeMap<String, String>,
}

/// What the counters need of one approval.
#[derive(Clone, Debug)]
struct Entry {
    namespace: String,
    /// The request's labels: spend limits sum amount labels, label-scoped
    /// rate limits count per value; keeping them all lets a limit added
    /// later count earlier approvals.
    labels: BTreeMap<String, String>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger holding past approvals, such as those read back from the
    /// SigningRequests after a restart.
    pub fn from_approvals<'a>(approvals: impl IntoIterator<Item = Approval<'a>>) -> Self {
        let mut ledger = Self::new();
        for approval in approvals {
            ledger.record(approval);
        }
        ledger
    }

    /// Evaluates `request` and, when it is allowed, records it as approved at
    /// `request.at`: decision and count in one step under the caller's lock.
    pub fn admit(&mut self, policy: &PolicySpec, request: &Request<'_>) -> Result<(), Denial> {
        evaluate(policy, self, request)?;
        self.record(Approval::from(request));
        self.approved.insert(request.uid.to_owned());
        Ok(())
    }

    /// Records an approval; returns `false` (and changes nothing) when its
    /// uid is already recorded.
    pub fn record(&mut self, approval: Approval<'_>) -> bool {
        self.insert(
            approval.uid,
            approval.approved_at,
            Entry { namespace: approval.namespace.to_owned(), labels: approval.labels.clone() },
        )
    }

    /// Records `entry` for `uid` at `at`, unless `uid` is recorded already.
    fn insert(&mut self, uid: &str, at: SystemTime, entry: Entry) -> bool {
        if self.uids.contains_key(uid) {
            return false;
        }
        self.uids.insert(uid.to_owned(), at);
        self.entries.insert((at, uid.to_owned()), entry);
        true
    }

    /// Drops approvals from before `cutoff`, such as `now - longest_period(policy)`;
    /// their uids wait in [`Ledger::expired`] for the durable copy to drop them.
    pub fn forget_before(&mut self, cutoff: SystemTime) {
        let kept = self.entries.split_off(&(cutoff, String::new()));
        let forgotten: Vec<String> =
            std::mem::replace(&mut self.entries, kept).into_keys().map(|(_, uid)| uid).collect();
        for uid in &forgotten {
            self.uids.remove(uid);
            self.approved.remove(uid);
        }
        self.expired.extend(forgotten);
    }

    /// Uids forgotten since the durable copy last dropped them: to drop
    /// with the next write.
    pub fn expired(&self) -> Vec<String> {
        self.expired.iter().cloned().collect()
    }

    /// The durable copy no longer holds `uids`.
    pub fn synced(&mut self, uids: &[String]) {
        for uid in uids {
            self.expired.remove(uid);
        }
    }

    /// Takes back the approval of `uid`, such as one that could not be
    /// stored durably; returns whether it was recorded.
    pub fn remove(&mut self, uid: &str) -> bool {
        let Some(at) = self.uids.remove(uid) else { return false };
        self.entries.remove(&(at, uid.to_owned()));
        self.approved.remove(uid);
        true
    }

    /// `uid`'s approval in the form the durable ledger stores it
    /// ([`Ledger::record_stored`] reads it back), or `None` when not recorded.
    /// Of its labels, only those `policy`'s limits read are kept, so an
    /// entry's size does not grow with the request's labels.
    pub fn stored(&self, uid: &str, policy: &PolicySpec) -> Option<String> {
        let at = *self.uids.get(uid)?;
        let entry = self.entries.get(&(at, uid.to_owned()))?;
        // Approvals are never before the epoch; saturate rather than lose one.
        let at_ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // Only what a limit can count: amounts parse from at most 20 bytes,
        // counted label values are at most MAX_COUNTED_LABEL.
        let read = |label: &String, value: &String| {
            let amount =
                policy.spend_limits.iter().any(|limit| &limit.amount_label == label) && parse_amount(value).is_some();
            let counted = policy.rate_limits.iter().any(|limit| limit.label.as_ref() == Some(label))
                && value.len() <= MAX_COUNTED_LABEL;
            amount || counted
        };
        let labels = (entry.labels.iter())
            .filter(|(label, value)| read(label, value))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let stored = StoredApproval { at_ms, namespace: entry.namespace.clone(), labels };
        serde_json::to_string(&stored).ok()
    }

    /// Records an approval read back from the durable ledger, and marks it
    /// [`Ledger::approved`]; returns `false` (and changes nothing) when
    /// `value` does not parse, and `false`, only marking it, when `uid` is
    /// already recorded.
    pub fn record_stored(&mut self, uid: &str, value: &str) -> bool {
        self.record_stored_as(uid, value, true)
    }

    /// Records an approval read back from the durable ledger whose seal did
    /// not check out: counted (the safe side for limits), never
    /// [`Ledger::approved`]. Returns like [`Ledger::record_stored`].
    pub fn record_unproven(&mut self, uid: &str, value: &str) -> bool {
        self.record_stored_as(uid, value, false)
    }

    fn record_stored_as(&mut self, uid: &str, value: &str, proven: bool) -> bool {
        let Ok(stored) = serde_json::from_str::<StoredApproval>(value) else { return false };
        let Some(at) = UNIX_EPOCH.checked_add(Duration::from_millis(stored.at_ms)) else { return false };
        // Counted once, but the sealed durable ledger is the operator's
        // word: a uid first read from a status is approved from here on.
        if proven {
            self.approved.insert(uid.to_owned());
        }
        self.insert(uid, at, Entry { namespace: stored.namespace, labels: stored.labels })
    }

    /// Whether the request with this uid is recorded (counted).
    pub fn contains(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// Whether the operator approved the request with this uid itself: by
    /// [`Ledger::admit`], or as the durable ledger it wrote says.
    pub fn approved(&self, uid: &str) -> bool {
        self.approved.contains(uid)
    }

    /// Number of recorded approvals.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no approval is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Approvals in `(at - period, at]`, oldest first, other than `except`'s.
    fn granted(&self, period: Duration, at: SystemTime, except: &str) -> impl Iterator<Item = (SystemTime, &Entry)> {
        // A window reaching before the earliest representable time holds everything.
        let since = at.checked_sub(period);
        let range = match since {
            Some(since) => self.entries.range((since, String::new())..),
            None => self.entries.range::<(SystemTime, String), _>(..),
        };
        range
            .skip_while(move |((approved_at, _), _)| since.is_some_and(|since| *approved_at <= since))
            .take_while(move |((approved_at, _), _)| *approved_at <= at)
            .filter(move |((_, uid), _)| uid != except)
            .map(|((approved_at, _), entry)| (*approved_at, entry))
    }
}

/// A policy with its strings parsed, or the first field that does not parse.
struct Compiled<'p> {
    denied_selector: Option<Selector<'p>>,
    allowed_selector: Option<Selector<'p>>,
    windows: Vec<Window>,
    rate_limits: Vec<(&'p RateLimit, Duration)>,
    spend_limits: Vec<(&'p SpendLimit, Duration)>,
}

impl<'p> Compiled<'p> {
    fn new(policy: &'p PolicySpec) -> Result<Self, Denial> {
        let selector = |selector: &'p Option<LabelSelector>, field: &str| {
            selector.as_ref().map(|selector| Selector::new(selector, field)).transpose()
        };
        let windows = policy
            .time_windows
            .iter()
            .enumerate()
            .map(|(i, window)| {
                let time = |value: &str, name: &str| {
                    parse_hh_mm(value).ok_or_else(|| {
                        invalid(format!("spec.policy.timeWindows[{i}].{name}: {value:?} is not a time of day as HH:MM"))
                    })
                };
                Ok(Window { start: time(&window.start, "start")?, end: time(&window.end, "end")? })
            })
            .collect::<Result<_, Denial>>()?;
        let rate_limits = policy
            .rate_limits
            .iter()
            .enumerate()
            .map(|(i, limit)| {
                if limit.requests == 0 {
                    return Err(invalid(format!("spec.policy.rateLimits[{i}].requests: must be at least 1")));
                }
                if (limit.scope == RateLimitScope::Label) != limit.label.is_some() {
                    return Err(invalid(format!(
                        "spec.policy.rateLimits[{i}].label: required with scope label, and allowed only with it"
                    )));
                }
                Ok((limit, period(&limit.period, &format!("rateLimits[{i}]"))?))
            })
            .collect::<Result<_, Denial>>()?;
        let spend_limits = policy
            .spend_limits
            .iter()
            .enumerate()
            .map(|(i, limit)| Ok((limit, period(&limit.period, &format!("spendLimits[{i}]"))?)))
            .collect::<Result<_, Denial>>()?;
        Ok(Self {
            denied_selector: selector(&policy.denied_selector, "deniedSelector")?,
            allowed_selector: selector(&policy.allowed_selector, "allowedSelector")?,
            windows,
            rate_limits,
            spend_limits,
        })
    }
}

/// A label selector, checked and ready to match.
struct Selector<'p> {
    requirements: Vec<Requirement<'p>>,
}

/// One term of a selector; all must hold.
enum Requirement<'p> {
    Equals(&'p str, &'p str),
    In(&'p str, &'p [String]),
    NotIn(&'p str, &'p [String]),
    Exists(&'p str),
    DoesNotExist(&'p str),
}

impl<'p> Selector<'p> {
    fn new(selector: &'p LabelSelector, field: &str) -> Result<Self, Denial> {
        let mut requirements: Vec<Requirement<'p>> =
            (selector.match_labels.iter().flatten()).map(|(key, value)| Requirement::Equals(key, value)).collect();
        for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
            let field = format!("spec.policy.{field}.matchExpressions[{i}]");
            let key = expression.key.as_str();
            let values = expression.values.as_deref().unwrap_or_default();
            let requirement = match expression.operator.as_str() {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(invalid(format!(
                        "{field}.operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                    )));
                }
            };
            match requirement {
                Requirement::In(..) | Requirement::NotIn(..) if values.is_empty() => {
                    return Err(invalid(format!("{field}.values: In and NotIn need at least one value")));
                }
                Requirement::Exists(_) | Requirement::DoesNotExist(_) if !values.is_empty() => {
                    return Err(invalid(format!("{field}.values: Exists and DoesNotExist take no values")));
                }
                _ => requirements.push(requirement),
            }
        }
        Ok(Self { requirements })
    }

    /// Kubernetes semantics: an empty selector matches everything.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|requirement| match *requirement {
            Requirement::Equals(key, value) => labels.get(key).is_some_and(|v| v == value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }
}

/// The `kubectl -l` form, such as `env in (prod),!legacy`.
impl fmt::Display for Selector<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{} (everything)");
        }
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match requirement {
                Requirement::Equals(key, value) => write!(f, "{key}={value}")?,
                Requirement::In(key, values) => write!(f, "{key} in ({})", values.join(","))?,
                Requirement::NotIn(key, values) => write!(f, "{key} notin ({})", values.join(","))?,
                Requirement::Exists(key) => write!(f, "{key}")?,
                Requirement::DoesNotExist(key) => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

/// A daily UTC window in minutes of the day, `start` inclusive, `end`
/// exclusive; `end <= start` wraps midnight (so `start == end` is all day).
struct Window {
    start: u16,
    end: u16,
}

impl Window {
    fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}–{}", hh_mm(self.start), hh_mm(self.end))
    }
}

fn deny(rule: Rule, message: String) -> Result<(), Denial> {
    Err(Denial { rule, message })
}

fn invalid(message: String) -> Denial {
    Denial { rule: Rule::InvalidPolicy, message: format!("invalid signing policy: {message}") }
}

fn period(value: &str, field: &str) -> Result<Duration, Denial> {
    parse_period(value).map_err(|e| invalid(format!("spec.policy.{field}.period: {value:?}: {e}")))
}

/// A label value as an amount: a non-negative integer.
/// A non-negative integer of at most 20 digits (`u64::MAX` has 20), so an
/// amount label cannot be padded with zeros to any length.
fn parse_amount(value: &str) -> Option<u64> {
    (value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit())).then(|| value.parse().ok()).flatten()
}

/// `HH:MM` to minutes of the day.
fn parse_hh_mm(value: &str) -> Option<u16> {
    let (hours, minutes) = value.split_once(':')?;
    let two_digits = |part: &str| if part.len() == 2 { part.parse::<u16>().ok() } else { None };
    let (hours, minutes) = (two_digits(hours)?, two_digits(minutes)?);
    (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
}

fn hh_mm(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// Minute of the UTC day (Unix time has no leap seconds).
fn minute_of_day(at: SystemTime) -> u16 {
    let second = i128::from(unix_seconds(at)).rem_euclid(86_400);
    u16::try_from(second / 60).unwrap_or(0)
}

/// Whole seconds since the Unix epoch, rounded down; saturates far from it.
fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let secs = before.as_secs() + u64::from(before.subsec_nanos() > 0);
            i64::try_from(secs).map_or(i64::MIN, |secs| -secs)
        }
    }
}

/// RFC 3339 in whole seconds, such as `2024-06-01T12:00:01Z`.
fn timestamp(at: SystemTime) -> String {
    let secs = unix_seconds(at);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs}s after the Unix epoch"))
}

fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let time = OffsetDateTime::parse(value, &Rfc3339).ok()?;
    let secs = time.unix_timestamp();
    let whole = Duration::from_secs(secs.unsigned_abs());
    let at = if secs >= 0 { UNIX_EPOCH.checked_add(whole) } else { UNIX_EPOCH.checked_sub(whole) }?;
    at.checked_add(Duration::from_nanos(u64::from(time.nanosecond())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use torcus_crds::{SigningRequestSpec, SigningRequestStatus, TimeWindow};

    /// 2024-06-01T00:00:00Z.
    const DAY: u64 = 1_717_200_000;
    /// 2024-06-01T12:00:00Z.
    const NOON: u64 = DAY + 12 * 3600;
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A request from `namespace` to a cluster in the same namespace.
    fn request<'a>(uid: &'a str, namespace: &'a str, secs: u64) -> Request<'a> {
        Request { uid, namespace, cluster_namespace: namespace, labels: &NO_LABELS, payload_bytes: None, at: at(secs) }
    }

    fn labelled<'a>(uid: &'a str, labels: &'a BTreeMap<String, String>, secs: u64) -> Request<'a> {
        Request { labels, ..request(uid, "ns-a", secs) }
    }

    fn rate(scope: RateLimitScope, requests: u32, period: &str) -> PolicySpec {
        PolicySpec {
            rate_limits: vec![RateLimit { scope, label: None, requests, period: period.into() }],
            ..PolicySpec::default()
        }
    }

    fn spend(label: &str, limit: u64, period: &str) -> PolicySpec {
        PolicySpec {
            spend_limits: vec![SpendLimit { amount_label: label.into(), limit, period: period.into() }],
            ..PolicySpec::default()
        }
    }

    fn windows(pairs: &[(&str, &str)]) -> PolicySpec {
        let time_windows =
            pairs.iter().map(|(start, end)| TimeWindow { start: start.to_string(), end: end.to_string() }).collect();
        PolicySpec { time_windows, ..PolicySpec::default() }
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn selector(match_labels: &[(&str, &str)], expressions: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!expressions.is_empty()).then_some(expressions),
        }
    }

    #[track_caller]
    fn denied(result: Result<(), Denial>, rule: Rule) -> String {
        match result {
            Err(denial) => {
                assert_eq!(denial.rule, rule, "{}", denial.message);
                denial.message
            }
            Ok(()) => panic!("expected a {rule} denial"),
        }
    }

    #[test]
    fn parse_period_reads_and_sums_units() {
        assert_eq!(parse_period("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_period("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_period("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_period("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_period("0h90s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn parse_period_rejects_zero_overflow_and_garbage() {
        for bad in ["", "1", "h", "1d", "1h30", "1 h", "-1m", "1.5h", "１h"] {
            assert_eq!(parse_period(bad), Err(PeriodError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_period("0s"), Err(PeriodError::Zero));
        assert_eq!(parse_period("0h0m"), Err(PeriodError::Zero));
        assert_eq!(parse_period("99999999999999999999s"), Err(PeriodError::Overflow));
        assert_eq!(parse_period("18446744073709551615h"), Err(PeriodError::Overflow));
    }

    #[test]
    fn empty_policy_allows_everything() {
        let big = Request { payload_bytes: Some(1 << 20), ..request("a", "ns-a", NOON) };
        assert_eq!(evaluate(&PolicySpec::default(), &Ledger::new(), &big), Ok(()));
    }

    #[test]
    fn denied_namespace_denies() {
        let policy = PolicySpec { denied_namespaces: vec!["ns-b".into()], ..PolicySpec::default() };
        let message = denied(evaluate(&policy, &Ledger::new(), &request("a", "ns-b", NOON)), Rule::DeniedNamespace);
        assert_eq!(message, "namespace ns-b is denied by the cluster's signing policy");
        assert_eq!(evaluate(&policy, &Ledger::new(), &request("a", "ns-a", NOON)), Ok(()));
    }

    #[test]
    fn allowed_namespaces_deny_the_rest() {
        let policy =
            PolicySpec { allowed_namespaces: Some(vec!["ns-a".into(), "ns-c".into()]), ..PolicySpec::default() };
        assert_eq!(evaluate(&policy, &Ledger::new(), &request("a", "ns-a", NOON)), Ok(()));
        let message = denied(evaluate(&policy, &Ledger::new(), &request("a", "ns-b", NOON)), Rule::AllowedNamespaces);
        assert_eq!(message, "namespace ns-b is not among the allowed namespaces (ns-a, ns-c)");
        let none = PolicySpec { allowed_namespaces: Some(vec![]), ..PolicySpec::default() };
        denied(evaluate(&none, &Ledger::new(), &request("a", "ns-a", NOON)), Rule::AllowedNamespaces);
    }

    #[test]
    fn another_namespace_signs_only_when_allowed_by_name() {
        let from = |namespace| Request { cluster_namespace: "vault", ..request("a", namespace, NOON) };
        // No list: the cluster's own namespace only.
        let open = PolicySpec::default();
        assert_eq!(evaluate(&open, &Ledger::new(), &from("vault")), Ok(()));
        let message = denied(evaluate(&open, &Ledger::new(), &from("payments")), Rule::AllowedNamespaces);
        assert_eq!(
            message,
            "requests from namespace payments need the policy of a cluster in namespace vault to list it in allowedNamespaces"
        );
        // A list names every namespace that may sign, the cluster's own included.
        let listed = PolicySpec { allowed_namespaces: Some(vec!["payments".into()]), ..PolicySpec::default() };
        assert_eq!(evaluate(&listed, &Ledger::new(), &from("payments")), Ok(()));
        denied(evaluate(&listed, &Ledger::new(), &from("vault")), Rule::AllowedNamespaces);
        denied(evaluate(&listed, &Ledger::new(), &from("intruder")), Rule::AllowedNamespaces);
    }

    #[test]
    fn denied_namespace_is_checked_before_allowed_namespaces_and_limits() {
        let policy = PolicySpec {
            denied_namespaces: vec!["ns-a".into()],
            allowed_namespaces: Some(vec!["ns-b".into()]),
            ..rate(RateLimitScope::Cluster, 1, "1m")
        };
        let ledger = Ledger::from_approvals([Approval::from(&request("old", "ns-a", NOON - 1))]);
        denied(evaluate(&policy, &ledger, &request("a", "ns-a", NOON)), Rule::DeniedNamespace);
    }

    #[test]
    fn denied_selector_denies_matching_labels() {
        let policy =
            PolicySpec { denied_selector: Some(selector(&[("team", "red")], vec![])), ..PolicySpec::default() };
        let red = labels(&[("team", "red")]);
        let blue = labels(&[("team", "blue")]);
        let message = denied(
            evaluate(&policy, &Ledger::new(), &Request { labels: &red, ..request("a", "ns-a", NOON) }),
            Rule::DeniedSelector,
        );
        assert_eq!(message, "the request's labels match the denied selector team=red");
        assert_eq!(evaluate(&policy, &Ledger::new(), &Request { labels: &blue, ..request("a", "ns-a", NOON) }), Ok(()));
        assert_eq!(evaluate(&policy, &Ledger::new(), &request("a", "ns-a", NOON)), Ok(()));
    }

    #[test]
    fn allowed_selector_requires_a_match() {
        let allowed = selector(&[], vec![expression("env", "In", &["prod", "staging"])]);
        let policy = PolicySpec { allowed_selector: Some(allowed), ..PolicySpec::default() };
        let prod = labels(&[("env", "prod")]);
        assert_eq!(evaluate(&policy, &Ledger::new(), &Request { labels: &prod, ..request("a", "ns-a", NOON) }), Ok(()));
        let message = denied(evaluate(&policy, &Ledger::new(), &request("a", "ns-a", NOON)), Rule::AllowedSelector);
        assert_eq!(message, "the request's labels do not match the allowed selector env in (prod,staging)");
    }

    #[test]
    fn selector_expressions_follow_kubernetes_semantics() {
        let check = |expressions: Vec<LabelSelectorRequirement>, pairs: &[(&str, &str)]| {
            let policy = PolicySpec { allowed_selector: Some(selector(&[], expressions)), ..PolicySpec::default() };
            let labels = labels(pairs);
            evaluate(&policy, &Ledger::new(), &Request { labels: &labels, ..request("a", "ns-a", NOON) }).is_ok()
        };
        assert!(check(vec![expression("env", "In", &["prod"])], &[("env", "prod")]));
        assert!(!check(vec![expression("env", "In", &["prod"])], &[("env", "dev")]));
        assert!(!check(vec![expression("env", "In", &["prod"])], &[]));
        assert!(check(vec![expression("env", "NotIn", &["prod"])], &[("env", "dev")]));
        assert!(check(vec![expression("env", "NotIn", &["prod"])], &[]), "NotIn holds when the label is absent");
        assert!(!check(vec![expression("env", "NotIn", &["prod"])], &[("env", "prod")]));
        assert!(check(vec![expression("owner", "Exists", &[])], &[("owner", "")]));
        assert!(!check(vec![expression("owner", "Exists", &[])], &[]));
        assert!(check(vec![expression("legacy", "DoesNotExist", &[])], &[("env", "prod")]));
        assert!(!check(vec![expression("legacy", "DoesNotExist", &[])], &[("legacy", "yes")]));
        // All terms must hold.
        let both = || vec![expression("env", "In", &["prod"]), expression("legacy", "DoesNotExist", &[])];
        assert!(check(both(), &[("env", "prod")]));
        assert!(!check(both(), &[("env", "prod"), ("legacy", "1")]));
        // An empty selector matches everything.
        assert!(check(vec![], &[]));
    }

    #[test]
    fn max_payload_size_allows_the_limit_and_ignores_digests() {
        let policy = PolicySpec { max_payload_bytes: Some(1024), ..PolicySpec::default() };
        let sized = |bytes| Request { payload_bytes: bytes, ..request("a", "ns-a", NOON) };
        assert_eq!(evaluate(&policy, &Ledger::new(), &sized(Some(1024))), Ok(()));
        assert_eq!(evaluate(&policy, &Ledger::new(), &sized(None)), Ok(()));
        let message = denied(evaluate(&policy, &Ledger::new(), &sized(Some(1025))), Rule::MaxPayloadSize);
        assert_eq!(message, "payload of 1025 bytes exceeds the limit of 1024 bytes");
    }

    #[test]
    fn time_window_allows_start_and_denies_end() {
        let policy = windows(&[("09:00", "17:00")]);
        let ledger = Ledger::new();
        assert_eq!(evaluate(&policy, &ledger, &request("a", "ns-a", DAY + 9 * 3600)), Ok(()));
        assert_eq!(evaluate(&policy, &ledger, &request("a", "ns-a", DAY + 17 * 3600 - 1)), Ok(()));
        let message = denied(evaluate(&policy, &ledger, &request("a", "ns-a", DAY + 17 * 3600)), Rule::TimeWindow);
        assert_eq!(message, "17:00 UTC is outside the signing windows 09:00–17:00 UTC");
        denied(evaluate(&policy, &ledger, &request("a", "ns-a", DAY + 8 * 3600 + 59 * 60)), Rule::TimeWindow);
    }

    #[test]
    fn time_window_wraps_midnight_and_any_window_suffices() {
        let policy = windows(&[("22:00", "02:00"), ("12:00", "12:30")]);
        let ledger = Ledger::new();
        for allowed in [DAY + 22 * 3600, DAY + 23 * 3600 + 59 * 60, DAY + 86_400, DAY + 86_400 + 3600, NOON + 60] {
            assert_eq!(evaluate(&policy, &ledger, &request("a", "ns-a", allowed)), Ok(()), "{allowed}");
        }
        let message = denied(evaluate(&policy, &ledger, &request("a", "ns-a", DAY + 2 * 3600)), Rule::TimeWindow);
        assert_eq!(message, "02:00 UTC is outside the signing windows 22:00–02:00, 12:00–12:30 UTC");
        denied(evaluate(&policy, &ledger, &request("a", "ns-a", DAY + 21 * 3600)), Rule::TimeWindow);
        // A window ending where it starts covers the whole day.
        assert_eq!(evaluate(&windows(&[("06:00", "06:00")]), &ledger, &request("a", "ns-a", DAY)), Ok(()));
    }

    #[test]
    fn rate_limit_allows_exactly_n_then_denies() {
        let policy = rate(RateLimitScope::Namespace, 3, "1m");
        let mut ledger = Ledger::new();
        for (i, uid) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(ledger.admit(&policy, &request(uid, "ns-a", NOON + 1 + i as u64)), Ok(()));
        }
        let message = denied(ledger.admit(&policy, &request("d", "ns-a", NOON + 10)), Rule::RateLimit);
        assert_eq!(
            message,
            "rate limit of 3 requests per 1m in namespace ns-a reached \
             (3 granted since 2024-06-01T12:00:01Z, next possible at 2024-06-01T12:01:01Z)"
        );
        assert!(!ledger.contains("d"), "a denied request is not recorded");
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn rate_limit_window_slides() {
        let policy = rate(RateLimitScope::Cluster, 2, "1m");
        let mut ledger = Ledger::new();
        ledger.admit(&policy, &request("a", "ns-a", NOON)).unwrap();
        ledger.admit(&policy, &request("b", "ns-a", NOON + 30)).unwrap();
        // `a` still counts one second before it leaves the window ...
        denied(evaluate(&policy, &ledger, &request("c", "ns-a", NOON + 59)), Rule::RateLimit);
        // ... and no longer once a full period has passed: the window is (at - 1m, at].
        assert_eq!(ledger.admit(&policy, &request("c", "ns-a", NOON + 60)), Ok(()));
        denied(evaluate(&policy, &ledger, &request("d", "ns-a", NOON + 61)), Rule::RateLimit);
        assert_eq!(evaluate(&policy, &ledger, &request("d", "ns-a", NOON + 90)), Ok(()));
    }

    #[test]
    fn namespace_scope_counts_per_namespace_and_cluster_scope_counts_all() {
        let per_namespace = rate(RateLimitScope::Namespace, 1, "1h");
        let mut ledger = Ledger::new();
        ledger.admit(&per_namespace, &request("a", "ns-a", NOON)).unwrap();
        denied(evaluate(&per_namespace, &ledger, &request("b", "ns-a", NOON + 1)), Rule::RateLimit);
        assert_eq!(ledger.admit(&per_namespace, &request("b", "ns-b", NOON + 1)), Ok(()));

        let cluster = rate(RateLimitScope::Cluster, 2, "1h");
        let message = denied(evaluate(&cluster, &ledger, &request("c", "ns-c", NOON + 2)), Rule::RateLimit);
        assert!(message.starts_with("rate limit of 2 requests per 1h in the cluster reached (2 granted"), "{message}");
    }

    #[test]
    fn spend_limit_sums_amounts_over_the_period() {
        let policy = spend("amount", 1000, "24h");
        let mut ledger = Ledger::new();
        let (six, four, one) = (labels(&[("amount", "600")]), labels(&[("amount", "400")]), labels(&[("amount", "1")]));
        assert_eq!(ledger.admit(&policy, &labelled("a", &six, NOON)), Ok(()));
        assert_eq!(ledger.admit(&policy, &labelled("b", &four, NOON + 60)), Ok(()), "exactly the limit is allowed");
        let message = denied(ledger.admit(&policy, &labelled("c", &one, NOON + 120)), Rule::SpendLimit);
        assert_eq!(
            message,
            "spend limit of 1000 amount per 24h would be exceeded (1000 granted in the last 24h, this request asks 1)"
        );
        // Once `a` is a day old, its 600 no longer count.
        assert_eq!(ledger.admit(&policy, &labelled("c", &six, NOON + 86_400)), Ok(()));
        let zero = labels(&[("amount", "0")]);
        assert_eq!(ledger.admit(&policy, &labelled("d", &zero, NOON + 86_401)), Ok(()));
    }

    #[test]
    fn spend_limit_denies_missing_or_malformed_amount() {
        let policy = spend("amount", 1000, "24h");
        let ledger = Ledger::new();
        let message = denied(evaluate(&policy, &ledger, &request("a", "ns-a", NOON)), Rule::SpendLimit);
        assert_eq!(message, "a spend limit applies to label amount, which the request is missing");
        for bad in ["-5", "1.5", "ten", "", " 7", "+7", "99999999999999999999"] {
            let labels = labels(&[("amount", bad)]);
            let message = denied(
                evaluate(&policy, &ledger, &Request { labels: &labels, ..request("a", "ns-a", NOON) }),
                Rule::SpendLimit,
            );
            assert_eq!(
                message,
                format!("label amount is {bad:?}, not a non-negative integer amount of at most 20 digits")
            );
        }
        // Zero padding cannot make an amount (or its stored copy) long.
        let padded = labels(&[("amount", &format!("{}1", "0".repeat(300_000)))]);
        let message = denied(
            evaluate(&policy, &ledger, &Request { labels: &padded, ..request("a", "ns-a", NOON) }),
            Rule::SpendLimit,
        );
        assert_eq!(
            message,
            "label amount is 300001 bytes long, not a non-negative integer amount of at most 20 digits"
        );
    }

    #[test]
    fn record_is_idempotent_by_uid() {
        let policy = rate(RateLimitScope::Cluster, 2, "1m");
        let mut ledger = Ledger::new();
        assert!(ledger.record(Approval::from(&request("a", "ns-a", NOON))));
        assert!(!ledger.record(Approval::from(&request("a", "ns-a", NOON + 5))));
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger.admit(&policy, &request("b", "ns-a", NOON + 10)), Ok(()));
        // Admitting `b` again (a retry after a lost status write) neither counts
        // it against itself nor twice.
        assert_eq!(ledger.admit(&policy, &request("b", "ns-a", NOON + 11)), Ok(()));
        assert_eq!(ledger.len(), 2);
        denied(evaluate(&policy, &ledger, &request("c", "ns-a", NOON + 12)), Rule::RateLimit);
    }

    #[test]
    fn rebuilt_ledger_gives_the_same_decisions() {
        let policy = PolicySpec {
            spend_limits: spend("amount", 100, "24h").spend_limits,
            ..rate(RateLimitScope::Namespace, 2, "1h")
        };
        let amounts = [labels(&[("amount", "40")]), labels(&[("amount", "50")]), labels(&[("amount", "5")])];
        let uids = ["a", "b", "c"];
        let namespaces = ["ns-a", "ns-b", "ns-a"];
        let mut live = Ledger::new();
        let mut approved = Vec::new();
        for i in 0..3 {
            let approval = Request { labels: &amounts[i], ..request(uids[i], namespaces[i], NOON + 600 * i as u64) };
            live.admit(&policy, &approval).unwrap();
            approved.push(approval);
        }
        let rebuilt = Ledger::from_approvals(approved.iter().map(Approval::from));

        let small = labels(&[("amount", "5")]);
        let large = labels(&[("amount", "6")]);
        let probes = [
            Request { labels: &small, ..request("d", "ns-a", NOON + 1800) },
            Request { labels: &small, ..request("d", "ns-b", NOON + 1800) },
            Request { labels: &large, ..request("d", "ns-b", NOON + 1800) },
            Request { labels: &small, ..request("d", "ns-a", NOON + 3600) },
        ];
        let decisions: Vec<_> =
            probes.iter().map(|probe| evaluate(&policy, &live, probe).map_err(|d| d.rule)).collect();
        assert_eq!(decisions, [Err(Rule::RateLimit), Ok(()), Err(Rule::SpendLimit), Ok(())]);
        for probe in &probes {
            assert_eq!(evaluate(&policy, &rebuilt, probe), evaluate(&policy, &live, probe));
        }
    }

    #[test]
    fn approval_is_read_from_a_signing_request() {
        let spec = SigningRequestSpec {
            cluster: "c".into(),
            cluster_namespace: None,
            key: "default".into(),
            digest: Some("00".repeat(32)),
            payload: None,
            payload_encoding: None,
            hash: None,
            derivation_path: None,
            labels: labels(&[("amount", "7")]),
        };
        let mut sr = SigningRequest::new("sr-1", spec);
        sr.metadata.namespace = Some("ns-a".into());
        sr.metadata.uid = Some("uid-1".into());
        assert!(Approval::from_signing_request(&sr).is_none(), "not approved yet");

        sr.status = Some(SigningRequestStatus {
            approved_at: Some("2024-06-01T12:00:01Z".into()),
            ..SigningRequestStatus::default()
        });
        let approval = Approval::from_signing_request(&sr).expect("approved");
        assert_eq!((approval.uid, approval.namespace, approval.approved_at), ("uid-1", "ns-a", at(NOON + 1)));
        let mut ledger = Ledger::from_approvals([approval]);
        // Counted, but a status is nobody's proof of an approval.
        assert!(ledger.contains("uid-1") && !ledger.approved("uid-1"));
        denied(
            evaluate(
                &spend("amount", 10, "1h"),
                &ledger,
                &Request { labels: &sr.spec.labels, ..request("x", "ns-a", NOON + 2) },
            ),
            Rule::SpendLimit,
        );

        sr.status =
            Some(SigningRequestStatus { approved_at: Some("yesterday".into()), ..SigningRequestStatus::default() });
        assert!(Approval::from_signing_request(&sr).is_none());
        // Decided by the policy itself, it is approved, and still counted once.
        let before = ledger.len();
        ledger.admit(&PolicySpec::default(), &request("uid-1", "ns-a", NOON + 3)).unwrap();
        assert!(ledger.approved("uid-1"));
        assert_eq!(ledger.len(), before);
    }

    #[test]
    fn forget_before_prunes_what_no_period_can_count() {
        let policy = PolicySpec {
            spend_limits: spend("amount", 10, "1h30m").spend_limits,
            ..rate(RateLimitScope::Cluster, 10, "1m")
        };
        assert_eq!(longest_period(&policy), Some(Duration::from_secs(5400)));
        assert_eq!(longest_period(&PolicySpec::default()), None);

        let mut ledger = Ledger::from_approvals(
            [("a", NOON), ("b", NOON + 100), ("c", NOON + 200)]
                .map(|(uid, secs)| Approval::from(&request(uid, "ns-a", secs))),
        );
        ledger.forget_before(at(NOON + 100));
        assert_eq!(ledger.expired(), ["a"]);
        assert!(!ledger.contains("a"));
        assert!(ledger.contains("b") && ledger.contains("c"));
        assert_eq!(ledger.len(), 2);
        // A forgotten uid may be recorded again.
        assert!(ledger.record(Approval::from(&request("a", "ns-a", NOON))));
    }

    #[test]
    fn label_scope_counts_per_value_of_the_label() {
        let policy = PolicySpec {
            rate_limits: vec![RateLimit {
                scope: RateLimitScope::Label,
                label: Some("requester".into()),
                requests: 1,
                period: "1h".into(),
            }],
            ..PolicySpec::default()
        };
        let alice = labels(&[("requester", "alice")]);
        let bob = labels(&[("requester", "bob")]);
        let mut ledger = Ledger::new();
        assert_eq!(ledger.admit(&policy, &labelled("a", &alice, NOON)), Ok(()));
        let message = denied(ledger.admit(&policy, &labelled("b", &alice, NOON + 1)), Rule::RateLimit);
        assert!(message.starts_with("rate limit of 1 requests per 1h for requester=alice reached"), "{message}");
        assert_eq!(ledger.admit(&policy, &labelled("c", &bob, NOON + 2)), Ok(()));
        let message = denied(ledger.admit(&policy, &request("d", "ns-a", NOON + 3)), Rule::RateLimit);
        assert_eq!(message, "a rate limit counts requests per label requester, which the request is missing");
        // The durable form keeps the label, so the count survives a restart.
        let mut restored = Ledger::new();
        assert!(restored.record_stored("a", &ledger.stored("a", &policy).unwrap()));
        denied(restored.admit(&policy, &labelled("b", &alice, NOON + 4)), Rule::RateLimit);
        // Counted values are bounded like Kubernetes label values.
        let long = labels(&[("requester", &"x".repeat(64))]);
        let message = denied(ledger.admit(&policy, &labelled("e", &long, NOON + 5)), Rule::RateLimit);
        assert_eq!(message, "label requester is 64 bytes long; a rate limit counts values of at most 63");
        // Forgotten approvals wait to be dropped from the durable copy until it says so.
        assert!(ledger.expired().is_empty());
        ledger.forget_before(at(NOON + 3600));
        let forgotten = ledger.expired();
        assert_eq!(forgotten, ["a", "c"]);
        ledger.synced(&forgotten);
        assert!(ledger.expired().is_empty());
        // A label scope without a label (or a label without the scope) is a broken policy.
        let mut broken = policy.clone();
        broken.rate_limits[0].label = None;
        let message = denied(evaluate(&broken, &Ledger::new(), &labelled("x", &alice, NOON)), Rule::InvalidPolicy);
        assert!(message.contains("spec.policy.rateLimits[0].label"), "{message}");
    }

    #[test]
    fn the_durable_form_reads_back_to_the_same_counters() {
        let policy = PolicySpec {
            spend_limits: spend("amount", 100, "1h").spend_limits,
            ..rate(RateLimitScope::Namespace, 2, "1h")
        };
        let sixty = labels(&[("amount", "60"), ("other", "7"), ("note", "x")]);
        let mut live = Ledger::new();
        live.admit(&policy, &labelled("a", &sixty, NOON)).unwrap();
        live.admit(&policy, &request("b", "ns-b", NOON + 1)).unwrap_err();
        let stored = live.stored("a", &policy).unwrap();
        assert!(!stored.contains("other"), "only amounts a spend limit reads are stored: {stored}");
        assert_eq!(live.stored("b", &policy), None, "a denied request is not recorded");

        let mut restored = Ledger::new();
        assert!(!restored.approved("a"));
        assert!(restored.record_stored("a", &stored));
        assert!(restored.approved("a"));
        assert!(!restored.record_stored("a", &stored), "a uid counts once");
        let mut unproven = Ledger::new();
        assert!(unproven.record_unproven("a", &stored));
        assert!(unproven.contains("a") && !unproven.approved("a"), "counted, not approved");
        assert!(!restored.record_stored("z", "{\"atMs\": 1}x"), "garbage is refused");
        assert!(!restored.record_stored("z", "{\"atMs\":1,\"namespace\":\"n\",\"labels\":{},\"extra\":1}"));
        assert_eq!(restored.len(), 1);
        // The restored entry spends the same 60 in the same namespace.
        let forty_one = labels(&[("amount", "41")]);
        let message = denied(restored.admit(&policy, &labelled("c", &forty_one, NOON + 60)), Rule::SpendLimit);
        assert!(message.contains("60 granted"), "{message}");
        let forty = labels(&[("amount", "40")]);
        assert_eq!(restored.admit(&policy, &labelled("d", &forty, NOON + 61)), Ok(()));
        // ... and leaves the window at the same time as the original.
        assert_eq!(restored.admit(&policy, &labelled("e", &sixty, NOON + 3600)), Ok(()));
    }

    #[test]
    fn an_approval_taken_back_no_longer_counts() {
        let policy = rate(RateLimitScope::Cluster, 1, "1h");
        let mut ledger = Ledger::new();
        ledger.admit(&policy, &request("a", "ns-a", NOON)).unwrap();
        denied(ledger.admit(&policy, &request("b", "ns-a", NOON + 1)), Rule::RateLimit);
        assert!(ledger.remove("a"));
        assert!(!ledger.remove("a"));
        assert!(ledger.is_empty());
        assert_eq!(ledger.admit(&policy, &request("b", "ns-a", NOON + 2)), Ok(()));
    }

    #[test]
    fn a_full_ledger_denies_rather_than_count_what_it_cannot_store() {
        let policy = rate(RateLimitScope::Cluster, 1_000_000, "1h");
        let uids: Vec<String> = (0..LEDGER_CAPACITY).map(|i| format!("r{i}")).collect();
        let mut ledger = Ledger::from_approvals(uids.iter().map(|uid| Approval::from(&request(uid, "ns-a", NOON))));
        let message = denied(ledger.admit(&policy, &request("x", "ns-a", NOON + 10)), Rule::RateLimit);
        assert!(message.contains(&LEDGER_CAPACITY.to_string()), "{message}");
        // Once the period has passed they no longer count.
        assert_eq!(ledger.admit(&policy, &request("x", "ns-a", NOON + 3600)), Ok(()));
        // Without limits nothing needs recording durably, and nothing is capped.
        assert_eq!(ledger.admit(&PolicySpec::default(), &request("y", "ns-a", NOON + 10)), Ok(()));
    }

    #[test]
    fn invalid_policy_denies_without_panicking() {
        let bad_expression = |operator: &str, values: &[&str]| PolicySpec {
            denied_selector: Some(selector(&[], vec![expression("env", operator, values)])),
            ..PolicySpec::default()
        };
        let cases = [
            (rate(RateLimitScope::Cluster, 3, "1x"), "spec.policy.rateLimits[0].period"),
            (rate(RateLimitScope::Cluster, 3, "0s"), "spec.policy.rateLimits[0].period"),
            (rate(RateLimitScope::Cluster, 0, "1m"), "spec.policy.rateLimits[0].requests"),
            (spend("amount", 3, "99999999999999999999h"), "spec.policy.spendLimits[0].period"),
            (windows(&[("09:00", "17:00"), ("9:00", "17:00")]), "spec.policy.timeWindows[1].start"),
            (windows(&[("09:00", "24:00")]), "spec.policy.timeWindows[0].end"),
            (bad_expression("Equals", &["prod"]), "spec.policy.deniedSelector.matchExpressions[0].operator"),
            (bad_expression("In", &[]), "spec.policy.deniedSelector.matchExpressions[0].values"),
            (bad_expression("Exists", &["x"]), "spec.policy.deniedSelector.matchExpressions[0].values"),
        ];
        for (policy, field) in cases {
            let message = denied(evaluate(&policy, &Ledger::new(), &request("a", "ns-a", NOON)), Rule::InvalidPolicy);
            assert!(message.starts_with(&format!("invalid signing policy: {field}: ")), "{message}");
        }
        // Even a request an earlier rule would deny is told the policy is broken.
        let broken = PolicySpec { denied_namespaces: vec!["ns-a".into()], ..rate(RateLimitScope::Cluster, 1, "soon") };
        denied(evaluate(&broken, &Ledger::new(), &request("a", "ns-a", NOON)), Rule::InvalidPolicy);
        // Far-off times do not panic either.
        let far = windows(&[("09:00", "17:00")]);
        let _ = evaluate(
            &far,
            &Ledger::new(),
            &Request { at: UNIX_EPOCH - Duration::from_millis(1), ..request("a", "ns-a", 0) },
        );
        let huge = rate(RateLimitScope::Cluster, 1, "18446744073709551615s");
        let mut ledger = Ledger::new();
        assert_eq!(ledger.admit(&huge, &request("a", "ns-a", NOON)), Ok(()));
        denied(ledger.admit(&huge, &request("b", "ns-a", NOON)), Rule::RateLimit);
    }

    #[test]
    fn rule_names_are_stable() {
        let names: Vec<_> = Rule::ALL.iter().map(|rule| rule.as_str()).collect();
        assert_eq!(
            names,
            [
                "denied-namespace",
                "allowed-namespaces",
                "denied-selector",
                "allowed-selector",
                "max-payload-size",
                "time-window",
                "rate-limit",
                "spend-limit",
                "invalid-policy"
            ]
        );
        assert_eq!(Rule::RateLimit.to_string(), "rate-limit");
    }
}
