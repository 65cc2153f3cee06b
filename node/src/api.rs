//! The node's HTTP API.
//!
//! - `POST /p2p/keygen`, `POST /p2p/sign` — body `{"grant": SignedGrant}`.
//!   The grant is the authentication: it must verify under the cluster's
//!   grant key. The initiator runs the session and answers with its outcome;
//!   any other participant answers 409 with `{"initiator": i}`.
//! - `GET /p2p/session/{id}` — state of a session (hex session id).
//! - `GET /p2p/keys` — names and public keys of the keys held here.
//! - `GET /p2p/presignatures` — the presignature pools held here (counts).
//! - `/healthz`, `/readyz`.
//!
//! Served over mutual TLS ([`crate::tls_listener`]): every call needs a
//! client certificate of the cluster CA naming this cluster's operator. A
//! node's certificate is refused (403): nodes talk to each other over their
//! transport, never through this API. `/metrics`, `/healthz` and `/readyz`
//! are also served in plain HTTP on a port of their own ([`plain_router`]),
//! so that scrapers and probes need no certificate and a NetworkPolicy that
//! lets a scraper in does not open the API.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};
use torcus_contract::api::PresignatureChoice;
use torcus_contract::{GrantKind, SignedGrant};

use crate::sessions::{Offer, Outcome, SessionError, Sessions};
use crate::tls_listener::Caller;
use crate::transport::Transport;

pub use torcus_contract::api::{ErrorBody, GrantRequest, KeyInfo};

/// What the readiness check asks.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

struct ApiState<T: Transport> {
    sessions: Arc<Sessions<T>>,
    ready: ReadyCheck,
}

/// Who may call the API, and where refusals are counted.
#[derive(Clone, Debug)]
pub struct Access {
    /// The only identity served: this cluster's operator.
    pub operator: torcus_certs::Identity,
    /// `torcus_node_api_refused_total`.
    pub refused: prometheus::IntCounterVec,
}

/// The API router over `sessions`, for connections from a
/// [`crate::tls_listener::TlsListener`]; only `access.operator` is served.
pub fn router<T: Transport>(sessions: Arc<Sessions<T>>, ready: ReadyCheck, access: Access) -> Router {
    let state = Arc::new(ApiState { sessions, ready });
    Router::new()
        .route("/p2p/keygen", post(keygen::<T>))
        .route("/p2p/sign", post(sign::<T>))
        .route("/p2p/session/{id}", get(session::<T>))
        .route("/p2p/keys", get(keys::<T>))
        .route(torcus_contract::api::AUX_INFO_PATH, get(aux_info::<T>))
        .route("/p2p/presignatures", get(presignatures::<T>))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<T>))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(Arc::new(access), require_operator))
}

/// `/metrics`, `/healthz` and `/readyz`, for the plain HTTP port.
pub fn plain_router(ready: ReadyCheck, registry: prometheus::Registry) -> Router {
    let readyz = move || {
        let ready = Arc::clone(&ready);
        async move { ready_answer(&ready) }
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move || async move { metrics(&registry) }))
}

/// Lets through only callers whose certificate names the cluster's operator.
async fn require_operator(
    State(access): State<Arc<Access>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Request,
    next: Next,
) -> Response {
    if caller.identity.as_ref() == Some(&access.operator) {
        return next.run(request).await;
    }
    access.refused.with_label_values(&["not_operator"]).inc();
    let who = caller.identity.map_or_else(|| "no Torcus identity".to_owned(), |i| i.uri());
    tracing::debug!(addr = %caller.addr, %who, "API call refused: not the operator");
    let message = format!("only {} may call this API, not {who}", access.operator.uri());
    (StatusCode::FORBIDDEN, Json(error_body(&message, "not_operator", None))).into_response()
}

async fn keygen<T: Transport>(State(state): State<Arc<ApiState<T>>>, Json(req): Json<GrantRequest>) -> Response {
    if !req.grant.grant.kind.is_keygen() {
        return bad_request("this endpoint takes keygen grants");
    }
    if !req.presignature.is_any() {
        return bad_request("a presignature applies to signing grants only");
    }
    answer(initiate(&state.sessions, req.grant, Offer::None).await)
}

async fn sign<T: Transport>(State(state): State<Arc<ApiState<T>>>, Json(req): Json<GrantRequest>) -> Response {
    if !matches!(req.grant.grant.kind, GrantKind::Sign { .. } | GrantKind::FrostSign { .. }) {
        return bad_request("this endpoint takes signing grants");
    }
    let presignature = match req.presignature {
        PresignatureChoice::Any => Offer::Any,
        PresignatureChoice::None => Offer::None,
        PresignatureChoice::Id(id) => match parse_id(&id) {
            Ok(id) => Offer::Id(id),
            Err(()) => return bad_request("a presignature id is 64 hex digits"),
        },
    };
    answer(initiate(&state.sessions, req.grant, presignature).await)
}

/// A presignature id: 64 hex digits.
fn parse_id(hex_id: &str) -> Result<[u8; 32], ()> {
    let mut id = [0; 32];
    hex::decode_to_slice(hex_id, &mut id).map_err(|_| ())?;
    Ok(id)
}

/// Runs the session in a task of its own: a caller that hangs up (an
/// operator that restarts) must not cancel a session the other participants
/// are in. Its outcome stays readable at `GET /p2p/session/{id}`.
async fn initiate<T: Transport>(
    sessions: &Arc<Sessions<T>>,
    grant: SignedGrant,
    presignature: Offer,
) -> Result<Outcome, SessionError> {
    let sessions = Arc::clone(sessions);
    match tokio::spawn(async move { sessions.initiate(grant, presignature).await }).await {
        Ok(result) => result,
        Err(error) => Err(SessionError::Aborted(format!("session task ended: {error}"))),
    }
}

async fn session<T: Transport>(State(state): State<Arc<ApiState<T>>>, Path(id): Path<String>) -> Response {
    let Some(session) = hex::decode(&id).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
        return bad_request("session id must be 64 hex digits");
    };
    match state.sessions.status(&session) {
        Some(status) => Json(status).into_response(),
        None => (StatusCode::NOT_FOUND, Json(error_body("no such session", "not_found", None))).into_response(),
    }
}

async fn keys<T: Transport>(State(state): State<Arc<ApiState<T>>>) -> Response {
    Json(state.sessions.keys()).into_response()
}

async fn aux_info<T: Transport>(State(state): State<Arc<ApiState<T>>>) -> Response {
    Json(torcus_contract::api::AuxInfoId { id: state.sessions.aux_id() }).into_response()
}

async fn presignatures<T: Transport>(State(state): State<Arc<ApiState<T>>>) -> Response {
    Json(state.sessions.presignature_pools()).into_response()
}

async fn readyz<T: Transport>(State(state): State<Arc<ApiState<T>>>) -> Response {
    ready_answer(&state.ready)
}

fn ready_answer(ready: &ReadyCheck) -> Response {
    match ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

fn metrics(registry: &prometheus::Registry) -> Response {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn answer(result: Result<Outcome, SessionError>) -> Response {
    match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(error) => {
            let status = match &error {
                SessionError::NotInitiator { .. }
                | SessionError::KeyExists(_)
                | SessionError::NoSuchAux(_)
                | SessionError::WrongScheme { .. } => StatusCode::CONFLICT,
                SessionError::Grant(_) => StatusCode::FORBIDDEN,
                SessionError::UnknownKey(_) => StatusCode::NOT_FOUND,
                SessionError::Aborted(_)
                | SessionError::AbortedBy { .. }
                | SessionError::Unreachable { .. }
                | SessionError::Misbehaved { .. }
                | SessionError::Silent { .. }
                | SessionError::Engine(
                    crate::engine::EngineError::Blamed { .. } | crate::engine::EngineError::BadPartial(_),
                )
                | SessionError::Preempted => StatusCode::SERVICE_UNAVAILABLE,
                SessionError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                SessionError::Engine(_)
                | SessionError::Store(_)
                | SessionError::Corrupt(_)
                | SessionError::ShareFormat { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let initiator = match &error {
                SessionError::NotInitiator { initiator } => Some(*initiator),
                _ => None,
            };
            let mut body = error_body(&error.to_string(), error.reason(), initiator);
            let fault = error.fault();
            body.blamed = fault.map(|f| f.party);
            body.accuser = fault.and_then(|f| f.accuser);
            (status, Json(body)).into_response()
        }
    }
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(error_body(message, "bad_request", None))).into_response()
}

fn error_body(error: &str, reason: &str, initiator: Option<u16>) -> ErrorBody {
    ErrorBody { error: error.to_owned(), reason: reason.to_owned(), initiator, blamed: None, accuser: None }
}
