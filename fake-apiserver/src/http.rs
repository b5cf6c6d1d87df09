//! The wire: TLS accept loop, bearer authentication, fault modes, the REST path table
//! (`/api/v1/...`, `/apis/GROUP/VERSION/[namespaces/NS/]PLURAL[/NAME[/status]]`), query
//! parameters, patch media types and the mapping of store outcomes to HTTP answers.
//! Never decides semantics itself: that is the store's.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::resource::{ResourceDef, Verbs};
use crate::schema::FieldValidation;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{DeleteOptions, Deleted, Part};
use crate::watch::{Watch, WatchRequest};
use crate::{CLIENT_TOKEN, Mode, Shared, Verb};

/// Request bodies above this are refused (the real server's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// Accept connections until aborted; aborting drops every connection (and watch) with it.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let Ok(tls) = shared.tls.accept(stream).await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    // A client going away is not this server's error.
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn respond(code: u16, v: &Value, warnings: &[String]) -> Response<Body> {
    let mut r =
        Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - {w:?}")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

fn failure(e: &ApiError) -> Response<Body> {
    respond(e.code, &e.body(), &[])
}

/// One parsed REST path.
#[derive(Debug)]
struct Route {
    def: Arc<ResourceDef>,
    namespace: Option<String>,
    name: Option<String>,
    part: Part,
}

fn route(shared: &Shared, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let lookup = |plural: &str| shared.registry.lookup(group, version, plural);
    let (def, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if lookup(plural).is_some_and(|d| d.namespaced) => {
            (lookup(plural), Some((*ns).to_owned()), tail)
        }
        [plural, tail @ ..] => (lookup(plural), None, tail),
        [] => (None, None, &[][..]),
    };
    let def = def.ok_or_else(ApiError::no_route)?;
    let (name, part) = match tail {
        [] => (None, Part::Main),
        [name] => (Some((*name).to_owned()), Part::Main),
        [name, "status"] if def.status_subresource => (Some((*name).to_owned()), Part::Status),
        _ => return Err(ApiError::no_route()),
    };
    if def.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Route {
        def,
        namespace,
        name,
        part,
    })
}

/// The query parameters this server reads.
#[derive(Debug, Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    labels: String,
    fields: String,
    bookmarks: bool,
    timeout: Option<Duration>,
    limit: Option<usize>,
    continue_token: Option<String>,
    field_validation: Option<String>,
    dry_run: bool,
    send_initial_events: bool,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "watch" => out.watch = v == "true" || v == "1",
                "resourceVersion" => out.resource_version = Some(v),
                "labelSelector" => out.labels = v,
                "fieldSelector" => out.fields = v,
                "allowWatchBookmarks" => out.bookmarks = v == "true" || v == "1",
                "timeoutSeconds" => out.timeout = v.parse().ok().map(Duration::from_secs),
                "limit" => out.limit = v.parse().ok().filter(|n| *n > 0),
                "continue" => out.continue_token = Some(v).filter(|s| !s.is_empty()),
                "fieldValidation" => out.field_validation = Some(v),
                "dryRun" => out.dry_run = !v.is_empty(),
                "sendInitialEvents" => out.send_initial_events = v == "true",
                _ => {}
            }
        }
        out
    }

    fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        match self.field_validation.as_deref() {
            None | Some("Strict") => Ok(FieldValidation::Strict),
            Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {other:?}: must be one of Ignore, Warn, Strict"
            ))),
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {CLIENT_TOKEN}"));
    if !authorized {
        shared.unauthorized.fetch_add(1, Ordering::SeqCst);
        return failure(&ApiError::unauthorized());
    }
    let mode = *shared.mode.lock();
    match mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Fail500 => {
            return failure(&ApiError::internal("etcdserver: request timed out"));
        }
        Mode::Normal => {}
    }
    match dispatch(&shared, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.reason == "Conflict" {
                shared.conflicts.fetch_add(1, Ordering::SeqCst);
            }
            failure(&e)
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<(Option<String>, Bytes), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_owned());
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let body = limited
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?
        .to_bytes();
    Ok((content_type, body))
}

fn parse_object(content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    match content_type {
        None | Some("application/json") => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}"))),
        Some("application/yaml") => serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not YAML: {e}"))),
        Some(other) => Err(ApiError::unsupported_media_type(
            other,
            "application/json, application/yaml",
        )),
    }
}

fn count(shared: &Shared, verb: Verb, def: &ResourceDef) {
    *shared
        .requests
        .lock()
        .entry((verb, def.qualified()))
        .or_default() += 1;
}

fn verb_of(method: &Method, route: &Route, q: &Query) -> Result<Verb, ApiError> {
    let named = route.name.is_some();
    let verb = match (method.as_str(), named) {
        ("GET", true) => Verb::Get,
        ("GET", false) if q.watch => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => return Err(ApiError::method_not_allowed()),
    };
    let allowed = match route.def.verbs {
        Verbs::All => true,
        Verbs::CreateOnly => verb == Verb::Create,
        Verbs::ReadOnly => matches!(verb, Verb::Get | Verb::List | Verb::Watch),
    };
    if !allowed
        || (route.part == Part::Status && !matches!(verb, Verb::Get | Verb::Update | Verb::Patch))
    {
        return Err(ApiError::method_not_allowed());
    }
    Ok(verb)
}

async fn dispatch(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let route = route(shared, req.uri().path())?;
    let q = Query::parse(req.uri().query());
    let verb = verb_of(req.method(), &route, &q)?;
    count(shared, verb, &route.def);
    if q.dry_run {
        return Err(ApiError::bad_request(
            "dryRun is not supported by this fake apiserver",
        ));
    }
    let def = route.def.clone();
    let ns = route.namespace.as_deref();
    let name = route.name.clone().unwrap_or_default();
    match verb {
        Verb::Get => {
            let obj = shared.store.lock().get(&def, ns, &name)?;
            Ok(respond(200, &obj, &[]))
        }
        Verb::List => list(shared, &def, ns, &q),
        Verb::Watch => watch(shared, route, &q),
        Verb::Create => {
            let fv = q.field_validation()?;
            let (ct, body) = read_body(req).await?;
            let obj = parse_object(ct.as_deref(), &body)?;
            if def.plural == "tokenreviews" {
                return token_review(shared, obj);
            }
            let (obj, warnings) = shared.store.lock().create(&def, ns, obj, fv)?;
            Ok(respond(201, &obj, &warnings))
        }
        Verb::Update => {
            let fv = q.field_validation()?;
            let (ct, body) = read_body(req).await?;
            let obj = parse_object(ct.as_deref(), &body)?;
            let (obj, warnings) =
                shared
                    .store
                    .lock()
                    .update(&def, ns, &name, route.part, fv, move |_| Ok(obj))?;
            Ok(respond(200, &obj, &warnings))
        }
        Verb::Patch => {
            let fv = q.field_validation()?;
            let (ct, body) = read_body(req).await?;
            let kind = PatchKind::of(ct.as_deref(), &def)?;
            let patch: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
            let (obj, warnings) =
                shared
                    .store
                    .lock()
                    .update(&def, ns, &name, route.part, fv, |old| {
                        kind.apply(old, &patch)
                    })?;
            Ok(respond(200, &obj, &warnings))
        }
        Verb::Delete => {
            let (_, body) = read_body(req).await?;
            let opts = delete_options(&body)?;
            let outcome = shared.store.lock().delete(&def, ns, &name, &opts)?;
            Ok(deleted(&def, outcome))
        }
        Verb::DeleteCollection => {
            let (_, body) = read_body(req).await?;
            let opts = delete_options(&body)?;
            let labels = LabelSelector::parse(&q.labels)?;
            let fields = FieldSelector::parse(&q.fields, def.extra_fields)?;
            let mut store = shared.store.lock();
            let mut items = Vec::new();
            for ((item_ns, item_name), _) in store.list(&def, ns, &labels, &fields) {
                let item_ns = Some(item_ns.as_str()).filter(|s| !s.is_empty());
                match store.delete(&def, item_ns, &item_name, &opts)? {
                    Deleted::Gone(o) | Deleted::Pending(o) => items.push(o),
                }
            }
            let rv = store.current_rv();
            Ok(respond(200, &list_body(&def, items, rv, None), &[]))
        }
    }
}

fn delete_options(body: &[u8]) -> Result<DeleteOptions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions::default());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions are not JSON: {e}")))?;
    DeleteOptions::parse(&v)
}

fn deleted(def: &ResourceDef, outcome: Deleted) -> Response<Body> {
    match outcome {
        Deleted::Pending(obj) => respond(200, &obj, &[]),
        Deleted::Gone(obj) if def.return_deleted_object => respond(200, &obj, &[]),
        Deleted::Gone(obj) => {
            let mut details = json!({
                "name": obj["metadata"]["name"],
                "kind": def.plural,
                "uid": obj["metadata"]["uid"],
            });
            if !def.group.is_empty() {
                details["group"] = def.group.clone().into();
            }
            respond(
                200,
                &json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }),
                &[],
            )
        }
    }
}

fn list_body(def: &ResourceDef, items: Vec<Value>, rv: u64, next: Option<String>) -> Value {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if let Some(c) = next {
        meta["continue"] = c.into();
    }
    json!({
        "kind": format!("{}List", def.kind),
        "apiVersion": def.api_version(),
        "metadata": meta,
        "items": items,
    })
}

fn list(
    shared: &Shared,
    def: &ResourceDef,
    ns: Option<&str>,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(&q.labels)?;
    let fields = FieldSelector::parse(&q.fields, def.extra_fields)?;
    let after = match &q.continue_token {
        None => None,
        Some(t) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once('/').map(|(a, b)| (a.to_owned(), b.to_owned())));
            Some(raw.ok_or_else(|| ApiError::bad_request("continue key is not valid"))?)
        }
    };
    let store = shared.store.lock();
    let rv = store.current_rv();
    let all: Vec<_> = store
        .list(def, ns, &labels, &fields)
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .collect();
    drop(store);
    let (items, next) = match q.limit {
        Some(n) if all.len() > n => {
            let (ns, name) = &all[n - 1].0;
            let token =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ns}/{name}"));
            (
                all.into_iter().take(n).map(|(_, o)| o).collect(),
                Some(token),
            )
        }
        _ => (all.into_iter().map(|(_, o)| o).collect(), None),
    };
    Ok(respond(200, &list_body(def, items, rv, next), &[]))
}

fn watch(shared: &Arc<Shared>, route: Route, q: &Query) -> Result<Response<Body>, ApiError> {
    let from = match q.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    if q.send_initial_events && !q.bookmarks {
        return Err(ApiError::invalid_watch(
            "sendInitialEvents requires setting allowWatchBookmarks to true",
        ));
    }
    let req = WatchRequest {
        labels: LabelSelector::parse(&q.labels)?,
        fields: FieldSelector::parse(&q.fields, route.def.extra_fields)?,
        def: route.def,
        namespace: route.namespace,
        from,
        bookmarks: q.bookmarks,
        initial_events: q.send_initial_events,
        timeout: q.timeout,
    };
    shared.watches.fetch_add(1, Ordering::SeqCst);
    let w = Watch::open(shared.clone(), req);
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        let chunk = w.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), w))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// The patch media types: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and for
/// built-ins strategic merge patch, applied as a merge patch (lists are replaced, not
/// merged by key). Server-side apply is not supported (415).
#[derive(Debug, Clone, Copy)]
enum PatchKind {
    Merge,
    Json,
}

impl PatchKind {
    fn of(content_type: Option<&str>, def: &ResourceDef) -> Result<PatchKind, ApiError> {
        let accepted = if def.schema.is_some() {
            "application/json-patch+json, application/merge-patch+json"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
        };
        match content_type {
            Some("application/merge-patch+json") => Ok(PatchKind::Merge),
            Some("application/strategic-merge-patch+json") if def.schema.is_none() => {
                Ok(PatchKind::Merge)
            }
            Some("application/json-patch+json") => Ok(PatchKind::Json),
            other => Err(ApiError::unsupported_media_type(
                other.unwrap_or(""),
                accepted,
            )),
        }
    }

    fn apply(self, old: &Value, patch: &Value) -> Result<Value, ApiError> {
        let mut doc = old.clone();
        match self {
            PatchKind::Merge => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                json_patch::merge(&mut doc, patch);
            }
            PatchKind::Json => {
                let ops: json_patch::Patch =
                    serde_json::from_value(patch.clone()).map_err(|e| {
                        ApiError::bad_request(format!("the JSON patch is malformed: {e}"))
                    })?;
                json_patch::patch(&mut doc, &ops).map_err(|e| {
                    ApiError::unprocessable(format!("the JSON patch could not be applied: {e}"))
                })?;
            }
        }
        // The stored resourceVersion stays unless the patch set one: then it is a precondition.
        Ok(doc)
    }
}

fn token_review(shared: &Shared, obj: Value) -> Result<Response<Body>, ApiError> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
    let review: TokenReview = serde_json::from_value(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "TokenReview in version \"v1\" cannot be handled as a TokenReview: {e}"
        ))
    })?;
    shared.reviews_seen.fetch_add(1, Ordering::SeqCst);
    let status = shared
        .reviews
        .lock()
        .get(&review.spec.token)
        .cloned()
        .unwrap_or_else(|| TokenReviewStatus {
            authenticated: Some(false),
            error: Some("[invalid bearer token]".to_owned()),
            ..TokenReviewStatus::default()
        });
    let answer = TokenReview {
        metadata: Default::default(),
        spec: review.spec,
        status: Some(status),
    };
    let mut v = serde_json::to_value(&answer)
        .map_err(|e| ApiError::internal(format!("cannot encode the TokenReview: {e}")))?;
    v["metadata"]["creationTimestamp"] = Value::Null;
    v["apiVersion"] = "authentication.k8s.io/v1".into();
    v["kind"] = "TokenReview".into();
    Ok(respond(201, &v, &[]))
}
