//! The registry's HTTP side: the router, authentication of node messages
//! (signed with the node's certificate), and the JSON refusals, counted.

use super::*;

/// The registry's HTTP endpoints (see [`torcus_contract::registry`] for paths and bodies).
pub fn router(registry: Arc<NodeRegistry>, trust: TrustLookup) -> axum::Router {
    axum::Router::new()
        .route(REGISTER_PATH, post(register))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .route(NODES_PATH, get(list_nodes))
        .route(NODE_PATH, get(one_node))
        .route(STATS_PATH, get(stats))
        .with_state(App { registry, trust })
}

/// The state of the handlers.
#[derive(Clone)]
pub(super) struct App {
    pub(super) registry: Arc<NodeRegistry>,
    pub(super) trust: TrustLookup,
}

/// Which endpoint a message came to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Register,
    Heartbeat,
}

pub(super) async fn register(State(app): State<App>, body: Body) -> Response {
    let now = Now::system();
    let result = match app.authenticate(Kind::Register, body, now).await {
        Ok(RegistryMessage::Register(registration)) => app.registry.accept_registration(registration, now),
        Ok(RegistryMessage::Heartbeat(_)) => Err(wrong_kind()),
        Err(rejection) => Err(rejection),
    };
    app.respond(result)
}

pub(super) async fn heartbeat(State(app): State<App>, body: Body) -> Response {
    let now = Now::system();
    let result = match app.authenticate(Kind::Heartbeat, body, now).await {
        Ok(RegistryMessage::Heartbeat(heartbeat)) => app.registry.accept_heartbeat(heartbeat, now),
        Ok(RegistryMessage::Register(_)) => Err(wrong_kind()),
        Err(rejection) => Err(rejection),
    };
    app.respond(result)
}

pub(super) async fn list_nodes(State(app): State<App>, Path((namespace, cluster)): Path<(String, String)>) -> Response {
    Json(app.registry.nodes(&namespace, &cluster)).into_response()
}

pub(super) async fn one_node(
    State(app): State<App>,
    Path((namespace, cluster, party)): Path<(String, String, String)>,
) -> Response {
    let Ok(party) = party.parse::<u16>() else {
        return Rejection::new(StatusCode::BAD_REQUEST, "malformed", "party is not an index").into_response();
    };
    match app.registry.node(&namespace, &cluster, party) {
        Some(record) => Json(record).into_response(),
        None => Rejection::new(StatusCode::NOT_FOUND, "not_found", "no such node").into_response(),
    }
}

pub(super) async fn stats(State(app): State<App>, Path((namespace, cluster)): Path<(String, String)>) -> Response {
    Json(app.registry.stats(&namespace, &cluster)).into_response()
}

impl App {
    /// Reads and checks a signed message: size, shape, endpoint, trust, signature,
    /// identity, clock. Returns the payload as signed.
    pub(super) async fn authenticate(&self, kind: Kind, body: Body, now: Now) -> Result<RegistryMessage, Rejection> {
        let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
            Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body exceeds 64 KiB or was cut short")
        })?;
        let malformed = |what: &str| Rejection::new(StatusCode::BAD_REQUEST, "malformed", what);
        let signed: SignedMessage =
            serde_json::from_slice(&bytes).map_err(|_| malformed("body is not a signed message"))?;
        let message: RegistryMessage =
            serde_json::from_str(&signed.payload).map_err(|_| malformed("payload is not a registry message"))?;
        let message_kind = match message {
            RegistryMessage::Register(_) => Kind::Register,
            RegistryMessage::Heartbeat(_) => Kind::Heartbeat,
        };
        if message_kind != kind {
            return Err(wrong_kind());
        }
        match &message {
            RegistryMessage::Register(registration) => validate(registration).map_err(malformed)?,
            RegistryMessage::Heartbeat(heartbeat) => {
                if let Some(why) = torcus_contract::registry::invalid_keys(&heartbeat.keys) {
                    return Err(malformed(why));
                }
            }
        }
        let signature = hex::decode(&signed.signature).map_err(|_| malformed("signature is not hex"))?;

        let (namespace, cluster, party) = message.node();
        let Some(bundle) = (self.trust)(namespace.to_owned(), cluster.to_owned()).await else {
            return Err(Rejection::new(StatusCode::UNAUTHORIZED, "unknown_cluster", "no such cluster"));
        };
        let identity = torcus_certs::verify_signed(
            &signed.certificate,
            &bundle,
            &registry::signing_input(&signed.payload),
            &signature,
            offset_time(now.unix_ms),
        )
        .map_err(certificate_rejection)?;
        let expected = Identity {
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            role: Role::Node { party_index: party },
        };
        if identity != expected {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "identity_mismatch",
                format!("certificate is for {}, message is from {}", identity.uri(), expected.uri()),
            ));
        }
        if message.sent_at().abs_diff(now.unix_ms) > MAX_CLOCK_SKEW_MS {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "stale",
                "sentAt is more than 60 s from the operator's clock",
            ));
        }
        Ok(message)
    }

    pub(super) fn respond(&self, result: Result<NodeRecord, Rejection>) -> Response {
        match result {
            Ok(record) => Json(record).into_response(),
            Err(rejection) => {
                self.registry.metrics.rejected.with_label_values(&[rejection.reason]).inc();
                tracing::debug!(reason = rejection.reason, error = %rejection.error, "registry refused a message");
                rejection.into_response()
            }
        }
    }
}

/// Why a message was refused, and the answer that says so.
#[derive(Debug)]
pub(super) struct Rejection {
    pub(super) status: StatusCode,
    /// One of [`REASONS`].
    pub(super) reason: &'static str,
    pub(super) error: String,
}

impl Rejection {
    pub(super) fn new(status: StatusCode, reason: &'static str, error: impl Into<String>) -> Self {
        Self { status, reason, error: error.into() }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.status, Json(RegistryError { error: self.error, reason: self.reason.to_owned() })).into_response()
    }
}

pub(super) fn wrong_kind() -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, "wrong_kind", "message kind does not match the endpoint")
}

/// A message not newer than the node's previous one: a replay, or the node's clock went back.
pub(super) fn replayed() -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, "replayed", "message is not newer than the node's previous one")
}

pub(super) fn certificate_rejection(error: torcus_certs::Error) -> Rejection {
    use torcus_certs::Error as E;
    let (status, reason) = match &error {
        E::BadSignature | E::UnsupportedKey => (StatusCode::UNAUTHORIZED, "bad_signature"),
        E::NoIdentity | E::AmbiguousIdentity => (StatusCode::FORBIDDEN, "identity_mismatch"),
        _ => (StatusCode::UNAUTHORIZED, "untrusted_certificate"),
    };
    Rejection::new(status, reason, error.to_string())
}
