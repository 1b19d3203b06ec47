//! The emulator's HTTP side: routing, auth, faults, and answering a
//! GetConnector query the way AFAS does.

use super::*;

pub(super) type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A body fed from a channel, for slow, truncated, broken and endless bodies.
pub(super) struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}

pub(super) fn full(body: impl Into<Bytes>) -> BoxBody {
    http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(super) fn respond(status: u16, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

pub(super) fn functional(message: &str) -> Response<BoxBody> {
    let body = json!({
        "externalMessage": message,
        "errorNumber": -1,
        "profitLogReference": format!("{:08X}-EMU", (message.len() as u32).wrapping_mul(2_654_435_761u32)),
    });
    respond(500, body.to_string())
}

pub(super) fn maintenance(retry_after: u64) -> Response<BoxBody> {
    let body =
        json!({"error": {"code": "maintenance", "message": "Profit is being updated"}, "retry_after": retry_after});
    let mut r = respond(503, body.to_string());
    if let Ok(v) = hyper::header::HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

/// Streams `body` according to a body fault.
pub(super) fn faulty_body(status: u16, body: Bytes, action: &FaultAction) -> Response<BoxBody> {
    let (tx, rx) = mpsc::channel(4);
    let action = action.clone();
    tokio::spawn(async move {
        let half = body.slice(0..body.len() / 2);
        match action {
            FaultAction::SlowBody { chunk_delay } => {
                for chunk in body.chunks(64) {
                    tokio::time::sleep(chunk_delay).await;
                    if tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk)))).await.is_err() {
                        return;
                    }
                }
            }
            FaultAction::Truncate => {
                let _ = tx.send(Ok(Frame::data(half))).await;
            }
            FaultAction::Reset => {
                let _ = tx.send(Ok(Frame::data(half))).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Err(std::io::Error::other("injected connection reset"))).await;
            }
            FaultAction::Hang => {
                let _ = tx.send(Ok(Frame::data(half))).await;
                // Hold the sender until the client gives up.
                tx.closed().await;
            }
            _ => {
                let _ = tx.send(Ok(Frame::data(body))).await;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r
}

pub(super) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

impl EmulatorState {
    fn connector_rows(&self, connector: &str, params: &[(String, String)]) -> Response<BoxBody> {
        let q = match query::parse(params) {
            Ok(q) => q,
            Err(e) => return functional(&e.0),
        };
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = data.connectors.get(connector) else {
            return respond(404, "");
        };
        let columns = conn.fields.len().max(1);
        if q.take > 0 && (q.take as usize).saturating_mul(columns) > MAX_CELLS_PER_PAGE {
            return functional("Out of memory");
        }
        // The cache is filled and read under the data lock, so an order
        // can never belong to other data.
        let cache_key = (connector.to_string(), q.order.clone());
        let cached = lock(&self.sorted).get(&cache_key).cloned();
        let order = match cached {
            Some(o) => o,
            None => match query::sort_order(conn, &q.order) {
                Ok(o) => {
                    let o = Arc::new(o);
                    lock(&self.sorted).insert(cache_key, o.clone());
                    o
                }
                Err(e) => return functional(&e.0),
            },
        };
        let rows = match query::apply_in_order(conn, &q, &order) {
            Ok(r) => r,
            Err(e) => return functional(&e.0),
        };
        let body = json!({"skip": q.skip, "take": q.take, "rows": rows});
        respond(200, body.to_string())
    }

    fn metainfo(&self) -> Response<BoxBody> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let list: Vec<Value> = data
            .connectors
            .iter()
            .map(|(id, c)| json!({"id": id, "description": c.description}))
            .collect();
        respond(
            200,
            json!({
                "updateConnectors": [],
                "getConnectors": list,
                "info": {"envid": "O12345AA", "appName": "Alleo App connector", "group": "Alleo Group", "tokenExpiry": self.reported_token_expiry()}
            })
            .to_string(),
        )
    }

    fn connector_meta(&self, connector: &str) -> Response<BoxBody> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = data.connectors.get(connector) else {
            return respond(404, "");
        };
        let fields: Vec<Value> = conn
            .fields
            .iter()
            .map(|f| {
                json!({"id": f.id, "fieldId": format!("U{}", f.id), "dataType": f.data_type, "label": f.label,
                       "length": 255, "controlType": 1, "decimals": if f.data_type == "decimal" { 2 } else { 0 }, "decimalsFieldId": ""})
            })
            .collect();
        respond(
            200,
            json!({"name": connector, "description": conn.description, "fields": fields}).to_string(),
        )
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path().to_string();
        let query_text = req.uri().query().map(str::to_string);
        let method = req.method().clone();
        let auth_scheme = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(' ').next())
            .unwrap_or("")
            .to_string();
        let params = parse_query(query_text.as_deref());
        let (latency, fault) = self.pick_fault(&path);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(FaultAction::Delay(d)) = &fault {
            tokio::time::sleep(*d).await;
        }
        let response = self
            .route(req, &path, query_text.as_deref(), &params, fault.as_ref())
            .await;
        lock(&self.log).push(LoggedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: params,
            status: response.status().as_u16(),
            auth_scheme,
        });
        self.after_answer(&path);
        response
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        query_text: Option<&str>,
        params: &[(String, String)],
        fault: Option<&FaultAction>,
    ) -> Response<BoxBody> {
        // The path prefix is case-insensitive in practice.
        let lower = path.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("/profitrestservices") else {
            return respond(404, "");
        };
        let original_rest = &path[path.len() - rest.len()..];
        let segments: Vec<&str> = original_rest.trim_matches('/').split('/').collect();
        let decoded: Vec<String> = segments
            .iter()
            .map(|s| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .collect();
        let lower_segs: Vec<String> = decoded.iter().map(|s| s.to_ascii_lowercase()).collect();
        let lower_refs: Vec<&str> = lower_segs.iter().map(String::as_str).collect();

        if query_text.map_or(0, str::len) > crate::afas::client::MAX_QUERY_LEN {
            return respond(404, "");
        }
        if req.method() == hyper::Method::POST {
            return match lower_refs.as_slice() {
                ["oauth", "token"] => match fault {
                    Some(FaultAction::Status { status, body }) => respond(*status, body.clone()),
                    _ => self.oauth_token(req).await,
                },
                ["_emulator", "connector", mode] => match ConnectorMode::parse(mode) {
                    Some(m) => {
                        self.set_connector_mode(m);
                        respond(200, json!({"connector": mode}).to_string())
                    }
                    None => respond(404, json!({"error": "token, hybrid or oauth"}).to_string()),
                },
                ["_emulator", "day", day] => {
                    let index = day
                        .parse::<usize>()
                        .ok()
                        .or_else(|| self.days.iter().position(|(n, _)| n.eq_ignore_ascii_case(day)));
                    match index {
                        Some(i) if self.set_day(i) => respond(200, json!({"day": i}).to_string()),
                        _ => respond(404, json!({"error": "no such day"}).to_string()),
                    }
                }
                _ => respond(404, ""),
            };
        }
        if req.method() != hyper::Method::GET {
            return respond(405, "");
        }
        if let Some(denied) = self.check_auth(&req) {
            return denied;
        }
        let real = match lower_refs.as_slice() {
            ["connectors", _] => self.connector_rows(&decoded[1], params),
            ["metainfo"] => self.metainfo(),
            ["metainfo", "get", _] => self.connector_meta(&decoded[2]),
            ["profitversion"] => respond(200, json!({"version": self.profit_version}).to_string()),
            _ => respond(404, ""),
        };
        match fault {
            None | Some(FaultAction::Delay(_)) => real,
            Some(FaultAction::Status { status, body }) => respond(*status, body.clone()),
            Some(FaultAction::Functional { message }) => functional(message),
            Some(FaultAction::Maintenance { retry_after }) => maintenance(*retry_after),
            Some(action) => {
                let status = real.status().as_u16();
                match real.into_body().collect().await {
                    Ok(b) => faulty_body(status, b.to_bytes(), action),
                    Err(_) => respond(500, ""),
                }
            }
        }
    }
}

/// Serves the emulator on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, state: Arc<EmulatorState>, shutdown: impl Future<Output = ()>) {
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}
